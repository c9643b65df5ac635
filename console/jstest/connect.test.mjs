// Tests of web/connect.js: node --test console/jstest/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient, encodeEnvelope, EnvelopeReader, ConnectError, FLAG_END_STREAM } from '../web/connect.js';

const enc = new TextEncoder();
const env = (flags, obj) => encodeEnvelope(flags, enc.encode(JSON.stringify(obj)));
const concat = (...parts) => { const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0)); let o = 0; for (const p of parts) { out.set(p, o); o += p.length; } return out; };
function bodyOf(chunks) { return new ReadableStream({ start(c) { for (const ch of chunks) c.enqueue(ch); c.close(); } }); }

test('envelopes split across and joined in chunks', () => {
  const all = concat(env(0, { a: 1 }), env(0, { b: 2 }), env(FLAG_END_STREAM, {}));
  for (let cut = 1; cut < all.length; cut++) {
    const r = new EnvelopeReader();
    const got = [...r.push(all.slice(0, cut)), ...r.push(all.slice(cut))];
    assert.equal(got.length, 3, `cut at ${cut}`);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(got[1].data)), { b: 2 });
    assert.equal(got[2].flags, FLAG_END_STREAM);
    assert.equal(r.pending, 0);
  }
});

test('unary sends Connect JSON and reads the answer', async () => {
  let seen;
  const c = createClient({ headers: () => ({ Authorization: 'Bearer k' }), fetchImpl: async (url, init) => { seen = { url, init }; return new Response('{"totalDevices":"3"}', { status: 200 }); } });
  const res = await c.unary('ferry.fleet.v1.FleetService', 'GetFleetSummary', {});
  assert.deepEqual(res, { totalDevices: '3' });
  assert.equal(seen.url, '/ferry.fleet.v1.FleetService/GetFleetSummary');
  assert.equal(seen.init.headers['Content-Type'], 'application/json');
  assert.equal(seen.init.headers['Connect-Protocol-Version'], '1');
  assert.equal(seen.init.headers.Authorization, 'Bearer k');
});

test('unary errors carry the Connect code and message', async () => {
  const c = createClient({ fetchImpl: async () => new Response('{"code":"permission_denied","message":"operator \\"v\\" has role viewer"}', { status: 403 }) });
  await assert.rejects(c.unary('s.S', 'M', {}), (e) => e instanceof ConnectError && e.code === 'permission_denied' && e.message === 'permission_denied: operator "v" has role viewer');
  const plain = createClient({ fetchImpl: async () => new Response('oops', { status: 503 }) });
  await assert.rejects(plain.unary('s.S', 'M', {}), (e) => e.code === 'unavailable');
});

test('stream delivers messages and ends cleanly', async () => {
  let sent;
  const c = createClient({ fetchImpl: async (url, init) => { sent = init; return new Response(bodyOf([concat(env(0, { n: 1 }), env(0, { n: 2 }).slice(0, 4)), concat(env(0, { n: 2 }).slice(4), env(FLAG_END_STREAM, {}))]), { status: 200 }); } });
  const got = [];
  await c.stream('s.S', 'Watch', { id: 'x' }, { onMessage: (m) => got.push(m.n) });
  assert.deepEqual(got, [1, 2]);
  assert.equal(sent.headers['Content-Type'], 'application/connect+json');
  const r = new EnvelopeReader().push(sent.body);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(r[0].data)), { id: 'x' });
});

test('stream end with an error rejects with it', async () => {
  const c = createClient({ fetchImpl: async () => new Response(bodyOf([concat(env(0, { n: 1 }), env(FLAG_END_STREAM, { error: { code: 'not_found', message: 'no rollout' } }))]), { status: 200 }) });
  const got = [];
  await assert.rejects(c.stream('s.S', 'W', {}, { onMessage: (m) => got.push(m) }), (e) => e.code === 'not_found' && e.rawMessage === 'no rollout');
  assert.equal(got.length, 1);
});

test('stream cut without its end message is an error', async () => {
  const c = createClient({ fetchImpl: async () => new Response(bodyOf([env(0, { n: 1 })]), { status: 200 }) });
  await assert.rejects(c.stream('s.S', 'W', {}), (e) => e.code === 'unavailable');
});
