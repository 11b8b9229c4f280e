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
    ['p1#room', `1|${start}|${start - 60_000}|${speed}|${paused}|60000|120|5000`],
    ['#room-keys', keys],
    ['p2', `on_sale|${T - 1000}|${T + 3_600_000}|1`],
  ]);
}

async function at(now, values, random = () => 0.5) {
  return loadHandler((key) => values.get(key), { now: () => now, random });
}

function visit(cookies = {}, query = { product_id: { value: 'p1' } }, ip = '198.51.100.7') {
  return {
    version: '1.0',
    context: { eventType: 'viewer-request' },
    viewer: { ip },
    request: { method: 'GET', uri: '/room', querystring: query, headers: {}, cookies },
  };
}

function buy(product, { cookies = {}, header, key } = {}) {
  const headers = { 'x-flashsale-product': { value: product } };
  if (header) {
    headers['x-flashsale-admission'] = { value: header };
  }
  if (key) {
    headers['idempotency-key'] = { value: key };
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

test('early arrivals draw their place over the early window, once; later ones queue by arrival', async () => {
  const places = [];
  for (let i = 0; i < 200; i += 1) {
    const ip = `203.0.113.${i}`;
    const first = await (await at(T - 50_000 + i, store(), () => i / 200))(visit({}, undefined, ip));
    assert.equal(first.statusCode, 200);
    places.push(placeMs(placeOf(first)));
    // Asking again without the cookie, later, with other draws: the same
    // place (refreshing or clearing cookies redraws nothing).
    const again = await (await at(T - 10_000, store(), () => 0.99))(visit({}, undefined, ip));
    assert.equal(placeMs(placeOf(again)), places[i], ip);
    // Nor a second admission at that place: the same nonce, which deduct
    // redeems for one account.
    assert.equal(placeOf(again).split('.')[3], placeOf(first).split('.')[3], ip);
  }
  assert.ok(places.every((p) => p >= T - 60_000 && p < T), 'within the early window');
  // Spread over it, not by arrival: a quarter of the window each quarter.
  for (let q = 0; q < 4; q += 1) {
    const n = places.filter((p) => p >= T - 60_000 + q * 15_000 && p < T - 45_000 + q * 15_000).length;
    assert.ok(n > 25 && n < 75, `quarter ${q}: ${n} of 200`);
  }
  // One first visit in 50 asks the origin to count its place, by its
  // nonce (as shared::room::sampled reads it); a returning one never.
  const sampled = [];
  for (let i = 0; i < 2000; i += 1) {
    const res = await (await at(T - 30_000, store(), () => i / 2000))(visit({}, undefined, `198.18.${i >> 8}.${i & 255}`));
    const nonce = placeOf(res).split('.')[3];
    const beacon = res.body.includes('<img src="/api/flash-sale/room/seen?product_id=p1"');
    assert.equal(beacon, parseInt(nonce.slice(0, 4), 16) % 50 === 0, nonce);
    if (beacon) {
      sampled.push(nonce);
      const back = await (await at(T - 20_000, store()))(visit({ fs_place_p1: { value: placeOf(res) } }, undefined, `198.18.${i >> 8}.${i & 255}`));
      assert.ok(!back.body.includes('<img'), 'a returning visitor is not counted again');
    }
  }
  assert.ok(sampled.length > 20 && sampled.length < 70, `${sampled.length} of 2000 sampled`);
  // After the start: the arrival time, a new place (and nonce) each time.
  const later = await (await at(T + 30_000, store({ speed: 100 })))(visit());
  assert.equal(placeMs(placeOf(later)), T + 30_000);
  const back = await (await at(T + 31_000, store({ speed: 100 }), () => 0.99))(visit());
  assert.equal(placeMs(placeOf(back)), T + 31_000);
  assert.notEqual(placeOf(back).split('.')[3], placeOf(later).split('.')[3]);
});

test('a visitor is let in once the frontier passed their place, with an admission and a safe redirect', async () => {
  const values = store();
  // The Rust-signed place: T - 1,234 ms.
  const place = RUST_PLACE;
  const cookies = { fs_place_p1: { value: place } };
  // Not started: a page, whatever the place.
  const before = await (await at(T - 1, values))(visit(cookies));
  assert.equal(before.statusCode, 200);
  assert.match(before.body, /The sale starts at/);
  assert.match(before.body, /About 294 people ahead/);
  assert.match(before.body, /http-equiv="refresh"/);
  // 2 s in the frontier stands at T - 40 s: 38.8 s of arrivals to go.
  const waiting = await (await at(T + 2_000, values))(visit(cookies));
  assert.match(waiting.body, /About 194 people ahead/);
  assert.match(waiting.body, /Estimated wait: 4 s/);
  const query = (back) => ({ product_id: { value: 'p1' }, return: { value: back } });
  const early = await (await at(T + 5_876, values))(visit(cookies, query('/products/p1')));
  assert.equal(early.statusCode, 200, 'not yet: the frontier stands 1 ms short');
  const inside = await (await at(T + 5_877, values))(visit(cookies, query('/products/p1')));
  assert.equal(inside.statusCode, 303);
  assert.equal(inside.headers.location.value, '/products/p1');
  const admission = inside.cookies.fs_admit_p1.value;
  assert.match(admission, /^a1\.p1\.1699999998766\.00ff00ff00ff00ff\./);
  assert.match(inside.cookies.fs_admit_p1.attributes, /Max-Age=120/);
  for (const back of ['//evil.example', '/\\evil.example', 'https://evil.example', '/\t/evil.example', '/a\nb']) {
    const res = await (await at(T + 5_877, values))(visit(cookies, query(back)));
    assert.equal(res.headers.location.value, '/', back);
  }
  // The admission buys; the place alone does not.
  const handler = await at(T + 6_000, values);
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
  const expired = await (await at(T + 125_877, values))(ok);
  assert.equal(expired.statusCode, 403);
  assert.match(JSON.parse(expired.body).message, /expired/);
  // A product without a room buys as before.
  const free = buy('p2');
  assert.equal(await handler(free), free.request);
  // A keyed buy needs the admission too; a keyed repeat after it expired
  // goes on (the origin answers the repeat from the first admission).
  const keyed = await handler(buy('p1', { key: 'k-1' }));
  assert.equal(keyed.statusCode, 403);
  const repeat = buy('p1', { key: 'k-1', header: admission });
  assert.equal(await (await at(T + 500_000, values))(repeat), repeat.request);
});

test('without readable keys a room fails closed; malformed values are not read as rooms', async () => {
  for (const keys of [`k1:${SECRET},`, `k1:short`, ` `]) {
    const values = store({ keys });
    const res = await (await at(T + 1_000, values))(buy('p1'));
    assert.equal(res.statusCode, 503, keys);
    assert.equal(JSON.parse(res.body).error, 'room_unavailable');
    const pageRes = await (await at(T + 1_000, values))(visit());
    assert.equal(pageRes.statusCode, 503);
    assert.match(pageRes.body, /http-equiv="refresh"/);
  }
  const noKeys = store();
  noKeys.delete('#room-keys');
  assert.equal((await (await at(T + 1_000, noKeys))(buy('p1'))).statusCode, 503);
  // An empty or non-integer field: no room (and no sale), so nothing is
  // let in by a misread start.
  for (const room of ['1||1699999940000|10000|0|60000|120|5', '1|1700000000000|1699999940000|1e4|0|60000|120|5']) {
    const values = store();
    values.set('p1#room', room);
    const event = visit();
    assert.equal(await (await at(T + 1_000, values))(event), event.request, room);
  }
  const values = store();
  values.set('p1', `upcoming|${T}|${T + 3_600_000}.5|1`);
  const event = visit();
  assert.equal(await (await at(T + 1_000, values))(event), event.request);
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
