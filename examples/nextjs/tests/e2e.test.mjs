// The Next.js example against the real financeATP API, in Debian's chromium (make test-nextjs).
//
// before: the API on a temporary database (scripts/api_server.py), a small proxy in front of it
// (it can lose an answer, answer 503, or swap in a rate-limited key, to show what the app does
// then), `next build` with the API key in its environment, `next start`, and chromium.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { EXAMPLE, startApi } from '../scripts/api.mjs';
import { fetchDocument, generate, stale } from '../scripts/types.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const RESULTS = path.join(EXAMPLE, 'test-results');
const NEXT = path.join(EXAMPLE, 'node_modules', 'next', 'dist', 'bin', 'next');

let api, proxy, app, browser, page;
const received = []; // every text body the browser received: none may hold the key

// --- the API, called directly for the test's setup ---------------------------------------

async function call(method, route, body, { key = api.admin_key, user } = {}) {
  const headers = { 'X-API-Key': key, 'Content-Type': 'application/json' };
  if (method !== 'GET') headers['Idempotency-Key'] = randomUUID();
  if (user) headers['X-Request-User-Id'] = user;
  const response = await fetch(api.url + route, { method, headers, body: body && JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

async function newUser(name) {
  const suffix = randomUUID().slice(0, 8);
  const created = await call('POST', '/users', {
    user_id: randomUUID(),
    username: `${name}_${suffix}`,
    email: `${name}_${suffix}@example.com`,
    display_name: name,
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body.user_id;
}

const balanceOf = async (user) => (await call('GET', `/users/${user}/balance`)).body.balance;

// --- a proxy between the app and the API -------------------------------------------------

const HOP_BY_HOP = ['host', 'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade', 'expect'];

function startProxy(target) {
  const state = {
    transfers: [],
    correlations: [],
    loseNextAnswer: false,
    gatewayErrorNext: false,
    unavailableNext: false,
    keyOverride: null,
  };
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const isTransfer = req.method === 'POST' && req.url === '/transfers';
    if (isTransfer) state.transfers.push(req.headers['idempotency-key']);
    if (isTransfer) state.correlations.push(req.headers['x-correlation-id']);
    if (isTransfer && state.unavailableNext) {
      state.unavailableNext = false; // what the API answers while its database is away
      res.writeHead(503, { 'Content-Type': 'application/json', 'Retry-After': '1' });
      return res.end(JSON.stringify({ error: 'unavailable', message: 'the database cannot be reached' }));
    }
    const headers = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.includes(name)) headers[name] = value;
    }
    if (state.keyOverride) headers['x-api-key'] = state.keyOverride;
    let upstream, body;
    try {
      upstream = await fetch(target + req.url, {
        method: req.method,
        headers,
        body: chunks.length ? Buffer.concat(chunks) : undefined,
      });
      body = Buffer.from(await upstream.arrayBuffer());
    } catch (error) {
      console.error('proxy:', req.method, req.url, error);
      res.writeHead(502);
      return res.end();
    }
    if (isTransfer && state.loseNextAnswer) {
      state.loseNextAnswer = false; // the transfer happened; its answer never arrives
      return req.socket.destroy();
    }
    if (isTransfer && state.gatewayErrorNext) {
      state.gatewayErrorNext = false; // the transfer happened; a gateway answers in its place
      res.writeHead(502, { 'Content-Type': 'text/html' });
      return res.end('<html><body>502 Bad Gateway</body></html>');
    }
    const out = {};
    upstream.headers.forEach((value, name) => {
      if (!HOP_BY_HOP.includes(name) && name !== 'content-encoding') out[name] = value;
    });
    res.writeHead(upstream.status, out);
    res.end(body);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ url: `http://127.0.0.1:${server.address().port}`, state, close: () => server.close() }),
    ),
  );
}

// --- the app -------------------------------------------------------------------------------

function appEnvironment() {
  return {
    ...process.env,
    FINANCEATP_URL: proxy.url,
    FINANCEATP_API_KEY: api.key,
    FINANCEATP_DEMO_ACTING_USER: 'request', // the demo's stand-in for a login (src/lib/acting-user.ts)
    NEXT_TELEMETRY_DISABLED: '1',
  };
}

async function startApp() {
  const port = await new Promise((resolve) => {
    const probe = http.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
  const child = spawn(process.execPath, [NEXT, 'start', '-H', '127.0.0.1', '-p', String(port)], {
    cwd: EXAMPLE,
    env: appEnvironment(),
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`next start exited with ${child.exitCode}`);
    try {
      if ((await fetch(url)).ok) return { url, child };
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('next start did not answer');
}

// --- the browser ---------------------------------------------------------------------------

async function openWallet(user) {
  await page.goto(`${app.url}/?user=${user}`);
  await page.getByTestId('balance').waitFor();
}

const balanceOnPage = () => page.getByTestId('balance').innerText();

async function send({ to, amount, memo = '' }) {
  const form = page.getByTestId('send-form');
  await form.locator('input[name=to]').fill(to);
  await form.locator('input[name=amount]').fill(amount);
  await form.locator('input[name=memo]').fill(memo);
  return form;
}

async function result(expected) {
  const locator = page.getByTestId('send-result');
  await page.waitForFunction(
    (text) => document.querySelector('[data-testid=send-result]')?.textContent?.includes(text),
    expected,
    { timeout: 30_000 },
  );
  return locator.innerText();
}

before(
  async () => {
    api = await startApi();
    proxy = await startProxy(api.url);
    // Built with the key in its environment: if any code path put it in a client bundle, it is there.
    const build = spawnSync(process.execPath, [NEXT, 'build'], { cwd: EXAMPLE, env: appEnvironment(), stdio: 'inherit' });
    assert.equal(build.status, 0, 'next build failed');
    app = await startApp();
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (Debian: apt-get install chromium)`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    });
    page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
    page.on('response', async (response) => {
      try {
        received.push({ url: response.url(), text: await response.text() });
      } catch {} // redirects and aborted requests have no body
    });
    await mkdir(RESULTS, { recursive: true });
  },
  { timeout: 900_000 },
);

after(async () => {
  await browser?.close();
  app?.child.kill('SIGTERM');
  proxy?.close();
  await api?.stop();
});

// --- the tests -------------------------------------------------------------------------------

test('the committed types are current with the running API /openapi.json', async () => {
  const differ = await stale(await generate(await fetchDocument(api.url)));
  assert.deepEqual(differ, [], 'run `make types` and commit the result');
});

test('the client bundle holds neither the API key nor the X-API-Key header name', async () => {
  const files = [];
  const walk = async (dir) => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else files.push(full);
    }
  };
  await walk(path.join(EXAMPLE, '.next', 'static'));
  assert.ok(files.some((f) => f.endsWith('.js')), 'no client JavaScript found in .next/static');
  for (const file of files) {
    const text = await readFile(file, 'latin1');
    assert.ok(!text.includes(api.key), `${file} holds the API key`);
    assert.ok(!/x-api-key/i.test(text), `${file} names the X-API-Key header`);
    assert.ok(!text.includes('FINANCEATP_API_KEY'), `${file} names FINANCEATP_API_KEY`);
  }
});

let alice, bob;

test('send ATP with the form: both balances and both histories change', async () => {
  alice = await newUser('alice');
  bob = await newUser('bob');
  assert.equal((await call('POST', '/admin/mint', { to_user_id: alice, amount: '100.00', reason: 'test grant' })).status, 201);

  await openWallet(alice);
  assert.equal(await balanceOnPage(), '100.00000000');
  await (await send({ to: bob, amount: '12.50', memo: 'lunch' })).getByRole('button', { name: 'Send' }).click();
  assert.match(await result('Sent 12.50000000 ATP'), new RegExp(bob));
  await page.waitForFunction(() => document.querySelector('[data-testid=balance]')?.textContent === '87.50000000');
  const newest = page.getByTestId('history-row').first();
  assert.equal(await newest.getAttribute('data-kind'), 'transfer_out');
  assert.match(await newest.innerText(), /lunch[\s\S]*12\.50000000[\s\S]*87\.50000000/);
  await page.screenshot({ path: path.join(RESULTS, 'send.png'), fullPage: true });

  await openWallet(bob);
  assert.equal(await balanceOnPage(), '12.50000000');
  const incoming = page.getByTestId('history-row').first();
  assert.equal(await incoming.getAttribute('data-kind'), 'transfer_in');
  assert.match(await incoming.innerText(), /lunch[\s\S]*\+12\.50000000/);
});

test('the same form submitted twice at once moves the money once', async () => {
  await openWallet(alice);
  const before = proxy.state.transfers.length;
  const form = await send({ to: bob, amount: '5', memo: 'double click' });
  await form.evaluate((element) => {
    element.requestSubmit();
    element.requestSubmit();
  });
  await result('Already sent: 5.00000000 ATP');
  const keys = proxy.state.transfers.slice(before);
  assert.equal(keys.length, 2, 'both submissions reached the API');
  assert.equal(keys[0], keys[1], 'with one Idempotency-Key');
  assert.equal(await balanceOf(alice), '82.50000000');
  assert.equal(await balanceOf(bob), '17.50000000');
  await openWallet(alice);
  assert.equal(await balanceOnPage(), '82.50000000');
  assert.equal(await page.locator('[data-testid=history-row]', { hasText: 'double click' }).count(), 1);
});

test('a lost answer, a 503 and a gateway 502 are retried with the same key, and pay once', async () => {
  // Each fault hits the transfer's first attempt; the 502 comes after the API committed, and says
  // nothing about the transfer. The retry carries the same key and the same correlation id (so the
  // transfer's events and audit row name the submission), and the API pays once.
  const faults = [
    ['loseNextAnswer', 'lost answer', '81.50000000'],
    ['unavailableNext', 'after 503', '80.50000000'],
    ['gatewayErrorNext', 'after 502', '79.50000000'],
  ];
  for (const [fault, memo, aliceAfter] of faults) {
    await openWallet(alice);
    const before = proxy.state.transfers.length;
    proxy.state[fault] = true;
    await (await send({ to: bob, amount: '1', memo })).getByRole('button', { name: 'Send' }).click();
    await result('Sent 1.00000000 ATP');
    const keys = proxy.state.transfers.slice(before);
    assert.equal(keys.length, 2, memo);
    assert.equal(keys[0], keys[1], memo);
    assert.deepEqual(proxy.state.correlations.slice(before), [keys[0], keys[0]], memo);
    assert.equal(await balanceOf(alice), aliceAfter, memo);
  }
  assert.equal(await balanceOf(bob), '20.50000000');
});

test('an overdraft, a frozen wallet and the rate limit read as messages', async () => {
  await openWallet(alice);
  await (await send({ to: bob, amount: '1000', memo: 'too much' })).getByRole('button', { name: 'Send' }).click();
  assert.match(await result('Not enough ATP'), /79\.50000000/);
  assert.equal(await page.getByTestId('send-result').getAttribute('role'), 'alert');
  await page.screenshot({ path: path.join(RESULTS, 'overdraft.png'), fullPage: true });
  assert.equal(await balanceOf(alice), '79.50000000');

  assert.equal((await call('POST', `/admin/users/${bob}/freeze`, { reason: 'test' })).status, 200);
  await openWallet(alice);
  await (await send({ to: bob, amount: '1' })).getByRole('button', { name: 'Send' }).click();
  await result('frozen wallet');
  assert.equal((await call('POST', `/admin/users/${bob}/unfreeze`, {})).status, 200);

  // A key allowed one request a minute, spent here; the app's next request uses it.
  await call('GET', `/users/${alice}/balance`, null, { key: api.limited_key });
  await openWallet(alice);
  proxy.state.keyOverride = api.limited_key;
  try {
    await (await send({ to: bob, amount: '1' })).getByRole('button', { name: 'Send' }).click();
    assert.match(await result('Too many requests'), /try again in \d+ seconds/);
  } finally {
    proxy.state.keyOverride = null;
  }
  assert.equal(await balanceOf(alice), '79.50000000');
});

test('history pages with a cursor', async () => {
  for (let i = 0; i < 4; i++) {
    await call('POST', '/admin/mint', { to_user_id: alice, amount: '1', reason: `page ${i}` });
  }
  await openWallet(alice); // 10 movements: 5 on the first page, 5 on the next
  assert.equal(await page.getByTestId('history-row').count(), 5);
  const first = await page.getByTestId('history').innerText();
  await page.getByTestId('older').click();
  await page.waitForURL(/cursor=/);
  await page.getByTestId('history').waitFor();
  assert.equal(await page.getByTestId('history-row').count(), 5);
  assert.notEqual(await page.getByTestId('history').innerText(), first);
  assert.match(await page.getByTestId('history').innerText(), /mint/);
});

test('no page or response the browser received holds the API key', () => {
  assert.ok(received.length > 0);
  for (const { url, text } of received) {
    assert.ok(!text.includes(api.key), `${url} holds the API key`);
    assert.ok(!/x-api-key/i.test(text), `${url} names the X-API-Key header`);
  }
});
