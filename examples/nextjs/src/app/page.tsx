import Link from 'next/link';
import { actingUserForPage } from '@/lib/acting-user';
import { describeFailure, financeatp, newIdempotencyKey, type Failure, type HistoryItem } from '@/lib/client';
import { SendForm } from './send-form';

const PAGE_SIZE = 5;

type SearchParams = Promise<{ user?: string | string[]; cursor?: string | string[] }>;

export default async function Home({ searchParams }: { searchParams: SearchParams }) {
  const params = await searchParams;
  const user = await actingUserForPage(params);
  const cursor = typeof params.cursor === 'string' && params.cursor ? params.cursor : undefined;
  return (
    <>
      <h1>financeATP wallet</h1>
      <form className="card" method="get">
        <label>
          Acting user (no login in this example: your product&apos;s session decides who this is)
          <input name="user" defaultValue={user ?? ''} placeholder="a financeATP user id" />
        </label>
        <button type="submit">Open wallet</button>
      </form>
      {user && <Wallet user={user} cursor={cursor} />}
    </>
  );
}

async function Wallet({ user, cursor }: { user: string; cursor?: string }) {
  const api = financeatp();
  const path = { user_id: user };
  const [balance, history] = await Promise.all([
    api.GET('/users/{user_id}/balance', { params: { path } }),
    api.GET('/users/{user_id}/history', { params: { path, query: { limit: PAGE_SIZE, cursor } } }),
  ]);
  if (!balance.data || !history.data) {
    const { error, response } = balance.data ? history : balance;
    const failure: Failure = {
      ok: false,
      error: error?.error ?? 'unexpected_response',
      message: error?.message ?? `HTTP ${response.status}`,
      retryAfter: Number(response.headers.get('Retry-After')) || undefined,
      indeterminate: false, // a read: nothing to resubmit
    };
    return (
      <p className="card error" role="alert">
        {response.status === 404 ? 'There is no user with this id.' : describeFailure(failure)}
      </p>
    );
  }
  const { next_cursor, items } = history.data;
  return (
    <>
      <div className="row">
        <section className="card" data-testid="balance-card">
          <h2>{balance.data.username}</h2>
          <div className="balance" data-testid="balance">
            {balance.data.balance}
          </div>
          <div className="muted">ATP{balance.data.is_frozen ? ' · frozen' : ''}</div>
          <p className="muted">
            <code>{user}</code>
          </p>
        </section>
        {/* A new Idempotency-Key for each rendered form: its submissions and their retries share it. */}
        <SendForm user={user} idempotencyKey={newIdempotencyKey()} />
      </div>
      <section className="card">
        <h2>History</h2>
        {items.length === 0 ? (
          <p className="muted">No movements{cursor ? ' on this page' : ' yet'}.</p>
        ) : (
          <table data-testid="history">
            <thead>
              <tr>
                <th>When</th>
                <th>Kind</th>
                <th>Counterparty</th>
                <th>Memo</th>
                <th className="num">Amount</th>
                <th className="num">Balance after</th>
              </tr>
            </thead>
            <tbody>{items.map((item) => <HistoryRow key={`${item.id}-${item.kind}`} item={item} />)}</tbody>
          </table>
        )}
        <nav>
          {cursor && <Link href={{ pathname: '/', query: { user } }}>« Newest</Link>}
          {next_cursor && (
            <Link href={{ pathname: '/', query: { user, cursor: next_cursor } }} data-testid="older">
              Older »
            </Link>
          )}
        </nav>
      </section>
    </>
  );
}

function HistoryRow({ item }: { item: HistoryItem }) {
  const outgoing = item.kind === 'transfer_out' || item.kind === 'refund_out' || item.kind === 'burn';
  const transfer = item.kind !== 'mint' && item.kind !== 'burn';
  return (
    <tr data-testid="history-row" data-kind={item.kind}>
      <td>{new Date(item.created_at).toISOString().replace('T', ' ').slice(0, 19)}</td>
      <td>{item.kind}</td>
      <td>{transfer && item.counterparty ? <code>{item.counterparty.slice(0, 8)}…</code> : '—'}</td>
      <td>{item.memo ?? ''}</td>
      <td className="num">
        {outgoing ? '−' : '+'}
        {item.amount}
      </td>
      <td className="num">{item.balance_after}</td>
    </tr>
  );
}
