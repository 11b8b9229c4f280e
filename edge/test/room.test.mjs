// The waiting room at the edge (docs/waiting-room.md): the very function
// file, its clock and draws set by the test, with CloudFront's event shape.
// Passes are the ones shared/src/room.rs signs: the vector below is that
// crate's test vector.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadHandler } from '../local/load.mjs';

const T = 1_700_000_000_000;
const SECRET = 'room-test-secret-0123456789abcdef';
/// shared/src/room.rs `a_place_signs_as_the_edge_signs_it`.
const RUST_PLACE = 'p1.p1.1699999998766.00ff00ff00ff00ff.1700000060000.k1.ccb95705abb8b738f071295fceb07aca';

/// A sale of product p1 starting at `start`, ending an hour later, with a
/// room: a 60 s early window, `speed` ms of arrival time a second from the
/// start, 120 s admissions, 5 visitors per second of arrival time.
function store({ start = T, speed = 10_000, paused = 0, state = 'upcoming', keys = `k1:${SECRET}` } = {}) {
  return new Map([
    ['p1', `${state}|${start}|${start + 3_600_000}|1`],
    ['p1#room', `1|${start}|${start - 60_000}|${speed}|${paused}|60000|120|5`],
    ['#room-keys', keys],
    ['p2', `on_sale|${T - 1000}|${T + 3_600_000}|1`],
  ]);
}

async function at(now, values, random = () => 0.5) {
  return loadHandler((key) => values.get(key), { now: () => now, random });
}

function visit(cookies = {}, query = { product_id: { value: 'p1' } }) {
  return {
    version: '1.0',
    context: { eventType: 'viewer-request' },
    viewer: { ip: '198.51.100.7' },
    request: { method: 'GET', uri: '/room', querystring: query, headers: {}, cookies },
  };
}

function buy(product, { cookies = {}, header } = {}) {
  const headers = { 'x-flashsale-product': { value: product } };
  if (header) {
    headers['x-flashsale-admission'] = { value: header };
  }
  return {
    version: '1.0',
    context: { eventType: 'viewer-request' },
    viewer: { ip: '198.51.100.7' },
    request: { method: 'POST', uri: '/api/flash-sale/buy', querystring: {}, headers, cookies },
  };
}

const placeOf = (res) => res.cookies.fs_place_p1.value;
const placeMs = (pass) => Number(pass.split('.')[2]);

test('a place signed by the functions is read as theirs, a tampered one gives no place', async () => {
  const handler = await at(T - 10_000, store());
  const kept = await handler(visit({ fs_place_p1: { value: RUST_PLACE } }));
  assert.equal(kept.statusCode, 200);
  assert.equal(kept.cookies.fs_place_p1, undefined, 'the place is kept, not redrawn');
  assert.match(kept.body, /You are in line/);
  for (const [bad, why] of [
    [RUST_PLACE.slice(0, -1) + '0', /signature does not match/],
    [RUST_PLACE.replace('.1699999998766.', '.1699999940000.'), /signature does not match/],
    [RUST_PLACE.replace('.k1.', '.k9.'), /no longer holds/],
    ['p1.p2', /not a waiting-room pass/],
  ]) {
    const res = await handler(visit({ fs_place_p1: { value: bad } }));
    assert.equal(res.statusCode, 403, bad);
    assert.match(res.body, why);
    assert.equal(res.cookies.fs_place_p1.value, '', 'the bad cookie is cleared');
    assert.match(res.cookies.fs_place_p1.attributes, /Max-Age=0/);
  }
  // Past its life: refused too.
  const late = await (await at(T + 60_000, store()))(visit({ fs_place_p1: { value: RUST_PLACE } }));
  assert.equal(late.statusCode, 403);
  assert.match(late.body, /expired/);
});

test('early arrivals draw their place over the early window; later ones queue by arrival', async () => {
  const draws = [0, 0.999999, 0.25];
  const places = [];
  for (const r of draws) {
    const res = await (await at(T - 50_000, store(), () => r))(visit());
    assert.equal(res.statusCode, 200);
    places.push(placeMs(placeOf(res)));
  }
  assert.deepEqual(places, [T - 60_000, T - 1, T - 45_000]);
  // After the start: the arrival time, whatever the draw.
  const later = await (await at(T + 30_000, store({ speed: 100 }), () => 0))(visit());
  assert.equal(placeMs(placeOf(later)), T + 30_000);
});

test('a visitor is let in once the frontier passed their place, with an admission and a safe redirect', async () => {
  const values = store();
  const place = (await (await at(T - 5_000, values, () => 0.5))(visit())).cookies.fs_place_p1.value;
  assert.equal(placeMs(place), T - 30_000);
  const cookies = { fs_place_p1: { value: place } };
  // Not started: a page, whatever the place.
  const before = await (await at(T - 1, values))(visit(cookies));
  assert.equal(before.statusCode, 200);
  assert.match(before.body, /The sale starts at/);
  assert.match(before.body, /About 150 people ahead/);
  assert.match(before.body, /http-equiv="refresh"/);
  // 2 s in the frontier stands at T - 40 s: 10 s to go.
  const waiting = await (await at(T + 2_000, values))(visit(cookies));
  assert.match(waiting.body, /About 50 people ahead/);
  assert.match(waiting.body, /Estimated wait: 1 s/);
  const query = (back) => ({ product_id: { value: 'p1' }, return: { value: back } });
  const inside = await (await at(T + 3_000, values))(visit(cookies, query('/products/p1')));
  assert.equal(inside.statusCode, 303);
  assert.equal(inside.headers.location.value, '/products/p1');
  const admission = inside.cookies.fs_admit_p1.value;
  assert.match(admission, /^a1\.p1\.1699999970000\./);
  assert.match(inside.cookies.fs_admit_p1.attributes, /Max-Age=120/);
  for (const back of ['//evil.example', '/\\evil.example', 'https://evil.example']) {
    const res = await (await at(T + 3_000, values))(visit(cookies, query(back)));
    assert.equal(res.headers.location.value, '/', back);
  }
  // The admission buys; the place alone does not.
  const handler = await at(T + 4_000, values);
  const ok = buy('p1', { cookies: { fs_admit_p1: { value: admission } } });
  assert.equal(await handler(ok), ok.request);
  const byHeader = buy('p1', { header: admission });
  assert.equal(await handler(byHeader), byHeader.request);
  for (const [event, why] of [
    [buy('p1'), /no admission/],
    [buy('p1', { header: place }), /not this kind/],
    [buy('p1', { header: admission.replace('a1.p1', 'a1.p2') }), /signature/],
  ]) {
    const res = await handler(event);
    assert.equal(res.statusCode, 403);
    const body = JSON.parse(res.body);
    assert.equal(body.error, 'admission_required');
    assert.equal(body.room, '/room?product_id=p1');
    assert.match(body.message, why);
  }
  // Expired: its 120 s are over.
  const expired = await (await at(T + 123_001, values))(ok);
  assert.equal(expired.statusCode, 403);
  assert.match(JSON.parse(expired.body).message, /expired/);
  // A product without a room buys as before.
  const free = buy('p2');
  assert.equal(await handler(free), free.request);
});

test('a paused inlet lets nobody in; a sold-out product is told at the edge', async () => {
  const place = (await (await at(T - 5_000, store(), () => 0))(visit())).cookies.fs_place_p1.value;
  const cookies = { fs_place_p1: { value: place } };
  const paused = await (await at(T + 30_000, store({ paused: 1 })))(visit(cookies));
  assert.equal(paused.statusCode, 200);
  assert.match(paused.body, /paused/);
  assert.equal(paused.cookies.fs_admit_p1, undefined);
  const gone = await (await at(T + 30_000, store({ state: 'sold_out' })))(visit(cookies));
  assert.equal(gone.statusCode, 200);
  assert.match(gone.body, /Sold out/);
  assert.equal(gone.headers['x-flashsale-edge'].value, 'room');
});

test('a rotated key still reads its passes and signs new ones with the current key', async () => {
  const keys = `k2:another-secret-0123456789abcdefgh,k1:${SECRET}`;
  const handler = await at(T - 10_000, store({ keys }));
  const kept = await handler(visit({ fs_place_p1: { value: RUST_PLACE } }));
  assert.equal(kept.statusCode, 200);
  const fresh = await handler(visit());
  assert.match(placeOf(fresh), /\.k2\.[0-9a-f]{32}$/);
});
