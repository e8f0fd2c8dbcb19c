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

/** The API's error codes (from its OpenAPI document), and the two of this client. */
export type ErrorCode = ApiError['error'] | 'network_error' | 'unexpected_response';

export type Failure = {
  ok: false;
  /** the API's error code; network_error when no answer came back, unexpected_response when
   * the answer was not the API's (a proxy's 502, say) */
  error: ErrorCode;
  message: string;
  status?: number;
  /** seconds, from Retry-After (429 and 503) */
  retryAfter?: number;
  /** true when the request may or may not have executed: resubmitting with the same key is safe */
  indeterminate: boolean;
};

export type SendResult =
  /** replayed: the API answered with the stored response of an earlier request with this key */
  | { ok: true; transfer: Transfer; replayed: boolean; attempts: number; correlationId: string }
  | (Failure & { attempts: number; correlationId: string });

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function retryAfterSeconds(response: Response): number | undefined {
  const seconds = Number(response.headers.get('Retry-After'));
  return Number.isFinite(seconds) && seconds > 0 ? seconds : undefined;
}

/**
 * POST /transfers as `from` (X-Request-User-Id), with the submission's Idempotency-Key and one
 * X-Correlation-Id for every attempt (by default the key: the events and audit rows of the
 * transfer then name the submission). No answer (a network error, a timeout), a 5xx, or an
 * answer that is not the API's are retried with the same key: the API executes one request per
 * key and replays its answer to the others, so a retry can never pay twice. The API's own
 * refusals (4xx) are final and returned as they are.
 */
export async function sendTransfer(
  input: { from: string; to: string; amount: string; memo?: string; idempotencyKey: string; correlationId?: string },
  { attempts = 3, timeoutMs = 10_000, maxWaitMs = 5_000 } = {},
): Promise<SendResult> {
  const api = financeatp(); // outside the retries: missing settings are a bug, not an outage
  const correlationId = input.correlationId ?? input.idempotencyKey;
  for (let attempt = 1; ; attempt++) {
    let wait = 200 * 2 ** attempt;
    try {
      const { data, error, response } = await api.POST('/transfers', {
        params: {
          header: {
            'Idempotency-Key': input.idempotencyKey,
            'X-Request-User-Id': input.from,
            'X-Correlation-Id': correlationId,
          },
        },
        body: {
          from_user_id: input.from,
          to_user_id: input.to,
          amount: input.amount,
          memo: input.memo || null,
        },
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (data) {
        const replayed = response.headers.get('Idempotent-Replayed') === 'true';
        return { ok: true, transfer: data, replayed, attempts: attempt, correlationId };
      }
      const fromApi = typeof error === 'object' && error !== null && typeof error.error === 'string';
      const failure: Failure = {
        ok: false,
        error: fromApi ? error.error : 'unexpected_response',
        message: fromApi ? error.message : `HTTP ${response.status}`,
        status: response.status,
        retryAfter: retryAfterSeconds(response),
        // A 5xx, or an answer that is not the API's, says nothing about whether the transfer ran.
        indeterminate: response.status >= 500 || !fromApi,
      };
      if (!failure.indeterminate || attempt >= attempts) return { ...failure, attempts: attempt, correlationId };
      wait = (failure.retryAfter ?? 0) * 1000 || wait;
    } catch (cause) {
      // No answer: the transfer may or may not have happened. Only the same key makes a retry safe.
      if (attempt >= attempts) {
        const failure: Failure = { ok: false, error: 'network_error', message: String(cause), indeterminate: true };
        return { ...failure, attempts: attempt, correlationId };
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
      // The API stores an answer only for a request it executed: an earlier submission of this
      // form, with other values, went through.
      return 'This form was submitted before with other values, and that submission went through. Check the history before sending again.';
    case 'invalid_request':
      return `Please check the form: ${failure.message}`;
    case 'unavailable':
    case 'network_error':
      return 'The ledger could not be reached, so we do not know yet whether the ATP was sent. Submit again: it will not be sent twice.';
    default:
      if (failure.indeterminate) {
        return `The ledger's answer was lost (${failure.message}), so we do not know yet whether the ATP was sent. Submit again: it will not be sent twice.`;
      }
      return `Something went wrong (${failure.error}): ${failure.message}`;
  }
}
