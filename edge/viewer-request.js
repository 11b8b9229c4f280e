// CloudFront Function (cloudfront-js-2.0, viewer request) on the buy
// route: answers "not started", "sold out" and "ended" from the sale state
// the backend publishes to the KeyValueStore, with the origin's own JSON,
// so those buyers never reach API Gateway. Anything else, an unknown key,
// a malformed value or any error goes on to the origin (fail open: the
// admission script stays the authority). The product page is not answered
// here: its answer is the whole page, which the edge caches for a second.
//
// The store holds one key per product id; the value is
// "<state>|<starts_at ms>|<control_seq>", state one of upcoming, on_sale,
// paused, sold_out, ended.
// The buy names its product without the body, which a function cannot
// read: the X-Flashsale-Product header or ?product_id=; a buy naming it
// only in its body goes on to the origin, and so does one with an
// Idempotency-Key (a repeat of an admitted buy is answered its status by
// the origin, sold out or not).
import cf from 'cloudfront';

const kvs = cf.kvs();
const ID = /^[A-Za-z0-9_-]{1,64}$/;

function productOf(request) {
  if (request.method !== 'POST' || request.uri !== '/api/flash-sale/buy') {
    return null;
  }
  const header = request.headers['x-flashsale-product'];
  if (header) {
    return header.value;
  }
  const query = request.querystring.product_id;
  return query ? query.value : null;
}

function refuse(status, description, code) {
  return {
    statusCode: status,
    statusDescription: description,
    headers: {
      'content-type': { value: 'application/json' },
      'cache-control': { value: 'no-store' },
      'x-flashsale-edge': { value: 'refused' },
    },
    body: JSON.stringify({ error: code }),
  };
}

async function handler(event) {
  const request = event.request;
  try {
    const id = productOf(request);
    if (!id || !ID.test(id) || request.headers['idempotency-key']) {
      return request;
    }
    const parts = (await kvs.get(id)).split('|');
    const state = parts[0];
    const startsAt = Number(parts[1]);
    if (state === 'sold_out') {
      return refuse(410, 'Gone', 'sold_out');
    }
    if (state === 'ended') {
      return refuse(403, 'Forbidden', 'sale_ended');
    }
    if (state === 'upcoming' && startsAt > Date.now()) {
      return refuse(403, 'Forbidden', 'sale_not_started');
    }
  } catch (e) {
    // No key (get throws), a malformed value, anything: the origin decides.
  }
  return request;
}
