'use client';

import { useActionState } from 'react';
import { sendAtp, type SendState } from './actions';

export function SendForm({ user, idempotencyKey }: { user: string; idempotencyKey: string }) {
  const [state, action, pending] = useActionState<SendState, FormData>(sendAtp, {
    status: 'idle',
    message: '',
    idempotencyKey,
  });
  const fields = state.fields;
  return (
    <form action={action} className="card" data-testid="send-form">
      <h2>Send ATP</h2>
      <input type="hidden" name="user" value={user} />
      <input type="hidden" name="idempotency_key" value={state.idempotencyKey} />
      <label>
        To (user id)
        <input name="to" required defaultValue={fields?.to} placeholder="0b7d2c44-91aa-4f3e-8e1b-5c2d3f4a5b02" />
      </label>
      <label>
        Amount (ATP)
        <input name="amount" required inputMode="decimal" defaultValue={fields?.amount} placeholder="12.50" />
      </label>
      <label>
        Memo
        <input name="memo" defaultValue={fields?.memo} placeholder="lunch" />
      </label>
      <button type="submit" disabled={pending}>
        {pending ? 'Sending…' : 'Send'}
      </button>
      {state.message && (
        <p role={state.status === 'error' ? 'alert' : 'status'} className={state.status} data-testid="send-result">
          {state.message}
        </p>
      )}
    </form>
  );
}
