// The financeATP client: server-only. The API key and the base URL come from the server's
// environment and this module refuses to be bundled for the browser (`server-only`), so neither
// can reach a client bundle. Copy this file and src/lib/financeatp.d.ts into your app.
import 'server-only';
import { randomUUID } from 'node:crypto';
import createClient, { type Client } from 'openapi-fetch';
import type { components, paths } from './financeatp';

export type Balance = components['schemas']['Balance'];
export type History = components['schemas']['History'];
export type HistoryItem = History['items'][number];
export type Transfer = components['schemas']['Transfer'];
export type ApiError = components['schemas']['Error'];

let client: Client<paths> | undefined;

/** The typed client; created on first use so that `next build` needs no secrets. */
export function financeatp(): Client<paths> {
  if (!client) {
    const baseUrl = process.env.FINANCEATP_URL;
    const apiKey = process.env.FINANCEATP_API_KEY;
    if (!baseUrl || !apiKey) throw new Error('FINANCEATP_URL and FINANCEATP_API_KEY must be set (server-side)');
    client = createClient<paths>({ baseUrl, headers: { 'X-API-Key': apiKey }, cache: 'no-store' });
  }
  return client;
}

/** A fresh Idempotency-Key: one per submission, reused for every retry of that submission. */
export const newIdempotencyKey = (): string => randomUUID();

export type Failure = {
  ok: false;
  /** the API's error code, or network_error when no answer came back */
  error: string;
  message: string;
  status?: number;
  /** seconds, from Retry-After (429 and 503) */
  retryAfter?: number;
  /** true when the request may or may not have executed: resubmitting with the same key is safe */
  indeterminate: boolean;
};

export type SendResult =
  /** replayed: the API answered with the stored response of an earlier request with this key */
  | { ok: true; transfer: Transfer; replayed: boolean; attempts: number }
  | (Failure & { attempts: number });

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function retryAfterSeconds(response: Response): number | undefined {
  const seconds = Number(response.headers.get('Retry-After'));
  return Number.isFinite(seconds) && seconds > 0 ? seconds : undefined;
}

/**
 * POST /transfers as `from` (X-Request-User-Id), with the submission's Idempotency-Key. A network
 * error (no answer, or a timeout) and a 503 are retried with the same key: the API executes one
 * request per key and replays its answer to the others, so a retry can never pay twice. Every
 * other answer is final and returned as it is.
 */
export async function sendTransfer(
  input: { from: string; to: string; amount: string; memo?: string; idempotencyKey: string },
  { attempts = 3, timeoutMs = 10_000, maxWaitMs = 5_000 } = {},
): Promise<SendResult> {
  for (let attempt = 1; ; attempt++) {
    let wait = 200 * 2 ** attempt;
    try {
      const { data, error, response } = await financeatp().POST('/transfers', {
        params: { header: { 'Idempotency-Key': input.idempotencyKey, 'X-Request-User-Id': input.from } },
        body: {
          from_user_id: input.from,
          to_user_id: input.to,
          amount: input.amount,
          memo: input.memo || null,
        },
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (data) {
        return { ok: true, transfer: data, replayed: response.headers.get('Idempotent-Replayed') === 'true', attempts: attempt };
      }
      const failure: Failure = {
        ok: false,
        error: error?.error ?? 'unexpected_response',
        message: error?.message ?? `HTTP ${response.status}`,
        status: response.status,
        retryAfter: retryAfterSeconds(response),
        indeterminate: response.status === 503,
      };
      if (response.status !== 503 || attempt >= attempts) return { ...failure, attempts: attempt };
      wait = (failure.retryAfter ?? 0) * 1000 || wait;
    } catch (cause) {
      // No answer: the transfer may or may not have happened. Only the same key makes a retry safe.
      if (attempt >= attempts) {
        return { ok: false, error: 'network_error', message: String(cause), indeterminate: true, attempts: attempt };
      }
    }
    await sleep(Math.min(wait, maxWaitMs));
  }
}

/** What a person reads for an API error. */
export function describeFailure(failure: Failure): string {
  switch (failure.error) {
    case 'insufficient_balance':
      return `Not enough ATP for this transfer. (${failure.message})`;
    case 'account_frozen':
      return 'This transfer involves a frozen wallet, so it cannot move ATP. Contact support.';
    case 'rate_limit_exceeded':
      return `Too many requests right now. Please try again in ${failure.retryAfter ?? 60} seconds.`;
    case 'user_not_found':
      return 'There is no such user. Check the recipient.';
    case 'unauthorized_transfer':
      return 'You can only send ATP from your own wallet.';
    case 'idempotency_conflict':
      return 'This form was already submitted with other values. Nothing was sent; please try again.';
    case 'invalid_request':
      return `Please check the form: ${failure.message}`;
    case 'unavailable':
    case 'network_error':
      return 'The ledger could not be reached, so we do not know yet whether the ATP was sent. Submit again: it will not be sent twice.';
    default:
      return `Something went wrong (${failure.error}): ${failure.message}`;
  }
}
