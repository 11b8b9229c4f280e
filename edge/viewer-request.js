// CloudFront Function (cloudfront-js-2.0, viewer request) on the buy
// route: answers "not started", "sold out" and "ended" from the sale state
// the backend publishes to the KeyValueStore, with the origin's own JSON,
// so those buyers never reach API Gateway. Anything else, an unknown key,
// a malformed value or any error goes on to the origin (fail open: the
// admission script stays the authority). The product page is not answered
// here: its answer is the whole page, which the edge caches for a second.
//
// The store holds one key per product id; the value is
// "<state>|<starts_at ms>|<ends_at ms>|<control_seq>", state one of
// upcoming, on_sale, paused, sold_out, ended (shared/src/edge.rs). The
// start and the end are compared with the clock here, so neither waits
// for a publish.
// The buy names its product without the body, which a function cannot
// read: the X-Flashsale-Product header or ?product_id=; a buy naming it
// only in its body goes on to the origin, and so does one with an
// Idempotency-Key (a repeat of an admitted buy is answered its status by
// the origin, sold out or not).
import cf from 'cloudfront';

const kvs = cf.kvs();
const ID = /^[A-Za-z0-9_-]{1,64}$/;
const STATES = ['upcoming', 'on_sale', 'paused', 'sold_out', 'ended'];

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

function refuse(status, description, code, extra) {
  return {
    statusCode: status,
    statusDescription: description,
    headers: {
      'content-type': { value: 'application/json' },
      'cache-control': { value: 'no-store' },
      'x-flashsale-edge': { value: 'refused' },
    },
    body: JSON.stringify(Object.assign({ error: code }, extra)),
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
    const endsAt = Number(parts[2]);
    if (parts.length !== 4 || STATES.indexOf(state) < 0 || !(startsAt >= 0) || !(endsAt >= 0)) {
      return request;
    }
    // The admission script's order: ended, then sold out (published only
    // for a started, unpaused sale), then not started.
    const now = Date.now();
    if (state === 'ended' || now >= endsAt) {
      return refuse(403, 'Forbidden', 'sale_ended');
    }
    if (state === 'sold_out') {
      return refuse(410, 'Gone', 'sold_out');
    }
    if (state === 'upcoming' && startsAt > now) {
      return refuse(403, 'Forbidden', 'sale_not_started', {
        starts_at: new Date(startsAt).toISOString(),
      });
    }
  } catch (e) {
    // No key (get throws), a malformed value, anything: the origin decides.
  }
  return request;
}
