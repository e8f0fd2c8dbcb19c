'use server';

import { revalidatePath } from 'next/cache';
import { actingUserForAction } from '@/lib/acting-user';
import { describeFailure, newIdempotencyKey, sendTransfer } from '@/lib/client';

export type SendState = {
  status: 'idle' | 'sent' | 'error';
  message: string;
  /** the Idempotency-Key the form carries for its next submission */
  idempotencyKey: string;
  /** what was typed, given back after an error so nothing has to be typed again */
  fields?: { to: string; amount: string; memo: string };
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Send ATP. The Idempotency-Key comes from the form: it was generated when the form was
 * rendered, so a double click, a browser retry or a resubmission after a lost answer all carry
 * the same key, and the API moves the money once. A final answer (success or a refusal) gives
 * the form a new key for its next submission; an indeterminate one (no answer, 503) keeps it,
 * so that submitting again is a safe retry.
 */
export async function sendAtp(_previous: SendState, form: FormData): Promise<SendState> {
  const from = await actingUserForAction(form);
  const key = String(form.get('idempotency_key') ?? '');
  const fields = {
    to: String(form.get('to') ?? '').trim(),
    amount: String(form.get('amount') ?? '').trim(),
    memo: String(form.get('memo') ?? '').trim(),
  };
  if (!from) return { status: 'error', message: 'Choose who you are first.', idempotencyKey: newIdempotencyKey(), fields };
  if (!UUID.test(key)) return { status: 'error', message: 'The form is stale: reload the page.', idempotencyKey: newIdempotencyKey(), fields };
  if (!UUID.test(fields.to)) {
    return { status: 'error', message: 'The recipient must be a user id (a UUID).', idempotencyKey: key, fields };
  }

  const result = await sendTransfer({ from, to: fields.to, amount: fields.amount, memo: fields.memo, idempotencyKey: key });
  if (result.ok) {
    revalidatePath('/');
    const { amount, to_user_id } = result.transfer;
    return {
      status: 'sent',
      // Replayed on our first attempt: the person submitted this form before (a double click, a
      // resubmission after a lost answer). Replayed after our own retry: this submission's answer.
      message:
        result.replayed && result.attempts === 1
          ? `Already sent: ${amount} ATP to ${to_user_id} (this repeated submission did not pay again).`
          : `Sent ${amount} ATP to ${to_user_id}.`,
      idempotencyKey: newIdempotencyKey(),
    };
  }
  return {
    status: 'error',
    message: describeFailure(result),
    idempotencyKey: result.indeterminate ? key : newIdempotencyKey(),
    fields,
  };
}
