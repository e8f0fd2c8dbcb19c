// WHERE YOUR AUTHENTICATION PLUGS IN.
//
// This example has no login: the acting user is whoever the page's `?user=` query parameter
// names, and the send form carries that id back to the server action. In your product, replace
// both functions with a read of the signed-in session (Auth.js `auth()`, Clerk `auth()`, your
// own cookie) that returns the person's financeATP user id. Never take the acting user from
// the request in production: financeATP trusts X-Request-User-Id because it trusts your
// server, and your server must only send the id of the person who is signed in.
//
// So that this stand-in cannot ship by accident, it fails closed in a production build (no acting
// user: the page asks for one and nothing can be sent) unless FINANCEATP_DEMO_ACTING_USER=request
// says that this is the demo (the browser test sets it; `npm run dev` needs nothing).
import 'server-only';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const demo = () =>
  process.env.NODE_ENV !== 'production' || process.env.FINANCEATP_DEMO_ACTING_USER === 'request';

/** The acting user of a page render, or null (the page then asks for one). */
export async function actingUserForPage(searchParams: { user?: string | string[] }): Promise<string | null> {
  const user = typeof searchParams.user === 'string' ? searchParams.user.trim() : '';
  return demo() && UUID.test(user) ? user.toLowerCase() : null;
}

/** The acting user of a server action (a form submission), or null. */
export async function actingUserForAction(form: FormData): Promise<string | null> {
  const user = String(form.get('user') ?? '').trim();
  return demo() && UUID.test(user) ? user.toLowerCase() : null;
}
