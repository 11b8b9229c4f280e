// The edge function as CloudFront runs it: the very file the template
// deploys, evaluated as a module whose `cloudfront` import is bound to an
// in-memory KeyValueStore, called with CloudFront's viewer-request event
// shape (version 1.0). Run: node --experimental-vm-modules --test edge/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { loadHandler } from '../local/load.mjs';
import { DEPLOYED, SOURCE, deployable } from '../local/deployable.mjs';

/// The function's `handler`, its store reading from `store` (a Map).
function load(store) {
  return loadHandler((key) => store.get(key));
}

/// A viewer-request event as CloudFront documents it.
function buy({ product, query, key, method = 'POST', uri = '/api/flash-sale/buy' } = {}) {
  const headers = { host: { value: 'd111111abcdef8.cloudfront.net' } };
  if (product !== undefined) {
    headers['x-flashsale-product'] = { value: product };
  }
  if (key) {
    headers['idempotency-key'] = { value: key };
  }
  return {
    version: '1.0',
    context: { eventType: 'viewer-request', requestId: 'r1', distributionId: 'E1' },
    viewer: { ip: '198.51.100.7' },
    request: {
      method,
      uri,
      querystring: query ? { product_id: { value: query } } : {},
      headers,
      cookies: {},
    },
  };
}

const HOUR = 3_600_000;

function store() {
  return new Map([
    ['soon', `upcoming|${Date.now() + HOUR}|${Date.now() + 2 * HOUR}|1`],
    // The start as the origin writes it (deduct's not_started_names_the_start).
    ['far', 'upcoming|4102444800042|4102448400000|1'],
    ['begun', `upcoming|${Date.now() - 1000}|${Date.now() + HOUR}|1`],
    ['live', `on_sale|${Date.now() - HOUR}|${Date.now() + HOUR}|2`],
    ['held', `paused|${Date.now() - HOUR}|${Date.now() + HOUR}|3`],
    ['gone', `sold_out|${Date.now() - HOUR}|${Date.now() + HOUR}|4`],
    ['over', `ended|${Date.now() - HOUR}|${Date.now() + HOUR}|5`],
    // Past its end before the publisher said so: ended, as the origin says.
    ['past', `on_sale|${Date.now() - 2 * HOUR}|${Date.now() - 1}|6`],
    // An older format, or foreign values: the origin decides.
    ['old', `sold_out|${Date.now() - HOUR}|4`],
    ['odd', `gone|${Date.now() - HOUR}|${Date.now() + HOUR}|4`],
    ['junk', 'no such state'],
  ]);
}

/// The answer as status and JSON body, or "origin" when it goes on.
function seen(event, result) {
  if (result === event.request) {
    return 'origin';
  }
  assert.equal(result.headers['content-type'].value, 'application/json');
  assert.equal(result.headers['cache-control'].value, 'no-store');
  return [result.statusCode, JSON.parse(result.body)];
}

test('refuses what the sale state settles, with the origin JSON', async () => {
  const handler = await load(store());
  const cases = [
    ['far', [403, { error: 'sale_not_started', starts_at: '2100-01-01T00:00:00.042Z' }]],
    ['gone', [410, { error: 'sold_out' }]],
    ['over', [403, { error: 'sale_ended' }]],
    ['past', [403, { error: 'sale_ended' }]],
    ['old', 'origin'],
    ['odd', 'origin'],
    // Started (the publisher has not said so yet), on sale, paused: the
    // origin answers.
    ['begun', 'origin'],
    ['live', 'origin'],
    ['held', 'origin'],
  ];
  for (const [product, want] of cases) {
    const event = buy({ product });
    assert.deepEqual(seen(event, await handler(event)), want, product);
    const byQuery = buy({ query: product });
    assert.deepEqual(seen(byQuery, await handler(byQuery)), want, `${product} by query`);
  }
});

test('fails open: unknown, malformed, body-only, keyed and other routes go on', async () => {
  const handler = await load(store());
  const events = [
    buy({ product: 'nobody-published-me' }),
    buy({ product: 'junk' }),
    buy({ product: 'bad.id' }),
    buy({ product: 'x'.repeat(65) }),
    buy({}),
    buy({ product: 'gone', key: 'k-1' }),
    buy({ product: 'gone', method: 'GET' }),
    buy({ product: 'gone', uri: '/api/flash-sale/products/gone', method: 'GET' }),
  ];
  for (const event of events) {
    assert.equal(seen(event, await handler(event)), 'origin', JSON.stringify(event.request));
  }
});

test('a failing store lets the request go on', async () => {
  const failing = new Map();
  failing.get = () => {
    throw new Error('throttled');
  };
  failing.has = () => true;
  const handler = await load(failing);
  const event = buy({ product: 'gone' });
  assert.equal(seen(event, await handler(event)), 'origin');
});

test('what deploys is the source, current, and fits CloudFront Functions: 10 KB', () => {
  assert.equal(
    readFileSync(DEPLOYED, 'utf8'),
    deployable(readFileSync(SOURCE, 'utf8')),
    'edge/dist/viewer-request.js is stale: run node edge/local/deployable.mjs',
  );
  assert.ok(statSync(DEPLOYED).size <= 10 * 1024, 'the deployed function is over 10 KB');
});
