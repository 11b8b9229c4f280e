import cf from 'cloudfront';
import crypto from 'crypto';
const kvs = cf.kvs();
const ID = /^[A-Za-z0-9_-]{1,64}$/;
const STATES = ['upcoming', 'on_sale', 'paused', 'sold_out', 'ended'];
const INT = /^-?\d{1,16}$/;
const BACK = /^\/(?![\/\\])[\w\-.~!$&'()*+,;=:@\/?%]*$/;
const KEY = /^([\w-]{1,8}):([\w-]{32,256})$/;
const SAMPLE = 50;
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
function ints(parts, from) {
return parts.slice(from).every((x) => INT.test(x)) ? parts.map(Number) : null;
}
function sale(value) {
const p = value.split('|');
const n = p.length === 4 && STATES.indexOf(p[0]) >= 0 && ints(p.slice(0, 3), 1);
return n && n[1] >= 0 && n[2] >= 0 ? { state: p[0], startsAt: n[1], endsAt: n[2] } : null;
}
function roomOf(value) {
const p = value.split('|');
const n = p.length === 8 && ints(p, 0);
if (!n || n[3] < 0 || n[4] > 1 || n[4] < 0 || n[5] < 0 || n[6] <= 0 || n[7] < 0) {
return null;
}
return { at: n[1], frontier: n[2], speed: n[3], paused: n[4] === 1, window: n[5], ttl: n[6], density: n[7] };
}
function frontier(room, now) {
if (room.paused || now <= room.at) {
return room.frontier;
}
return Math.max(room.frontier, Math.min(now, room.frontier + Math.floor((now - room.at) * room.speed / 1000)));
}
function keysOf(value) {
return value.split(',').map((k) => {
const m = KEY.exec(k.trim());
if (!m) {
throw new Error('bad room keys');
}
return { id: m[1], secret: m[2] };
});
}
function mac(key, payload) {
return crypto.createHmac('sha256', key.secret).update(payload).digest('hex').slice(0, 32);
}
function sign(kind, id, place, nonce, expires, key) {
const payload = [kind, id, place, nonce, expires, key.id].join('.');
return payload + '.' + mac(key, payload);
}
function verify(value, keys, kind, id, now) {
const f = value.split('.');
if (f.length !== 7) {
return { refused: 'not a waiting-room pass' };
}
const key = keys.filter((k) => k.id === f[5])[0];
if (!key) {
return { refused: 'signed with a key the room no longer holds' };
}
if (mac(key, f.slice(0, 6).join('.')) !== f[6]) {
return { refused: 'its signature does not match (altered or forged)' };
}
if (f[0] !== kind) {
return { refused: 'not this kind of pass' };
}
if (f[1] !== id) {
return { refused: 'issued for another product' };
}
if (now >= Number(f[4])) {
return { refused: 'expired' };
}
return { place: Number(f[2]), nonce: f[3], expires: Number(f[4]) };
}
function hex8() {
return ('0000000' + Math.floor(Math.random() * 4294967296).toString(16)).slice(-8);
}
function cookie(value, expires, now) {
return {
value: value,
attributes: 'Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=' + Math.max(0, Math.ceil((expires - now) / 1000)),
};
}
function escape(text) {
return String(text).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
}
function page(status, title, lines, refresh, cookies = {}) {
const head = refresh ? '<meta http-equiv="refresh" content="' + refresh + '">' : '';
return {
statusCode: status,
statusDescription: status === 200 ? 'OK' : 'Refused',
headers: {
'content-type': { value: 'text/html; charset=utf-8' },
'cache-control': { value: 'no-store' },
'x-flashsale-edge': { value: 'room' },
},
cookies: cookies,
body: '<!doctype html><html><head><meta charset="utf-8"><title>' + escape(title) + '</title>' + head
+ '</head><body><h1>' + escape(title) + '</h1>'
+ lines.map((l) => '<p>' + l + '</p>').join('') + '</body></html>',
};
}
async function roomPage(request, now, ip) {
const id = request.querystring.product_id ? request.querystring.product_id.value : '';
if (!ID.test(id)) {
return request;
}
const room = roomOf(await kvs.get(id + '#room'));
const s = sale(await kvs.get(id));
if (!room || !s) {
return request;
}
let keys;
try {
keys = keysOf(await kvs.get('#room-keys'));
} catch (e) {
return page(503, 'The line is being set up', ['Please wait; this page tries again.'], 5);
}
if (s.state === 'sold_out' || s.state === 'ended' || now >= s.endsAt) {
return page(200, s.state === 'sold_out' ? 'Sold out' : 'The sale has ended', ['Every unit is taken. Thank you for waiting.']);
}
const name = 'fs_place_' + id;
const held = request.cookies[name];
let place;
let counted = '';
const cookies = {};
if (held) {
place = verify(held.value, keys, 'p1', id, now);
if (place.refused) {
cookies[name] = cookie('', now, now);
return page(403, 'Your place could not be read', [
'Your place in line was refused: ' + escape(place.refused) + '. It gives you no place.',
'<a href="/room?product_id=' + id + '">Take a new place</a> (at the back of the line).',
], 0, cookies);
}
} else {
const drawn = mac(keys[0], 'draw.' + ip + '.' + id);
const early = now < s.startsAt;
const at = early ? s.startsAt - room.window + (room.window > 0 ? parseInt(drawn.slice(0, 12), 16) % room.window : 0) : now;
place = { place: at, nonce: early ? drawn.slice(12, 28) : hex8() + hex8(), expires: s.endsAt };
if (parseInt(place.nonce.slice(0, 4), 16) % SAMPLE === 0) {
counted = '<img src="/api/flash-sale/room/seen?product_id=' + id + '" alt="" width="1" height="1">';
}
cookies[name] = cookie(sign('p1', id, at, place.nonce, s.endsAt, keys[0]), s.endsAt, now);
}
const ahead = Math.max(0, place.place - frontier(room, now));
if (!room.paused && now >= room.at && ahead === 0) {
const expires = now + room.ttl * 1000;
cookies['fs_admit_' + id] = cookie(sign('a1', id, place.place, place.nonce, expires, keys[0]), expires, now);
const back = request.querystring['return'] ? request.querystring['return'].value : '/';
return {
statusCode: 303,
statusDescription: 'See Other',
headers: {
location: { value: BACK.test(back) ? back : '/' },
'cache-control': { value: 'no-store' },
'x-flashsale-edge': { value: 'room' },
},
cookies: cookies,
};
}
const wait = room.paused || room.speed === 0 ? null : Math.ceil(Math.max(0, room.at - now) / 1000 + ahead / room.speed);
const lines = [
s.state === 'upcoming' && now < s.startsAt
? 'The sale starts at ' + new Date(s.startsAt).toISOString() + '; places before it are drawn at random.'
: 'The sale is on.',
'About ' + Math.round(ahead * room.density / 1e6) + ' people ahead of you.',
wait === null ? 'The line is paused for a moment.' : 'Estimated wait: ' + wait + ' s.',
'This page takes you on when it is your turn; come back before ' + new Date(place.expires).toISOString() + ' to keep your place.' + counted,
];
return page(200, 'You are in line', lines, Math.min(5, Math.max(1, wait === null ? 5 : Math.ceil(wait / 4))), cookies);
}
async function admitted(request, id, now, keyed) {
let room;
try {
room = roomOf(await kvs.get(id + '#room'));
} catch (e) {
return true;
}
if (!room) {
return true;
}
let keys;
try {
keys = keysOf(await kvs.get('#room-keys'));
} catch (e) {
return refuse(503, 'Service Unavailable', 'room_unavailable', { message: 'the waiting room cannot check admissions now; try again shortly' });
}
const held = request.headers['x-flashsale-admission'] || request.cookies['fs_admit_' + id];
const pass = held ? verify(held.value, keys, 'a1', id, keyed ? 0 : now) : { refused: 'no admission' };
return pass.refused ? refuse(403, 'Forbidden', 'admission_required', {
message: 'this sale has a waiting room: ' + pass.refused + '; wait your turn at the room',
room: '/room?product_id=' + id,
}) : true;
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
const now = Date.now();
if (request.method === 'GET' && request.uri === '/room') {
return await roomPage(request, now, event.viewer.ip);
}
const id = productOf(request);
if (!id || !ID.test(id)) {
return request;
}
if (request.headers['idempotency-key']) {
const ok = await admitted(request, id, now, true);
return ok === true ? request : ok;
}
const s = sale(await kvs.get(id));
if (!s) {
return request;
}
if (s.state === 'ended' || now >= s.endsAt) {
return refuse(403, 'Forbidden', 'sale_ended');
}
if (s.state === 'sold_out') {
return refuse(410, 'Gone', 'sold_out');
}
if (s.state === 'upcoming' && s.startsAt > now) {
return refuse(403, 'Forbidden', 'sale_not_started', {
starts_at: new Date(s.startsAt).toISOString(),
});
}
const ok = await admitted(request, id, now, false);
if (ok !== true) {
return ok;
}
} catch (e) {
}
return request;
}
