//! An in-memory Redis for deterministic simulations: the real Lua scripts
//! run in an embedded Lua 5.1 (Redis' own version) against a small keyspace,
//! behind the same [`RedisGate`](super::RedisGate) the functions use. Only
//! the commands the scripts and the adapter send are implemented.
//!
//! What a simulation needs from it besides fidelity:
//! - a clock it controls (`TIME`, key expiry);
//! - a failover that forgets the last N writes ([`SimRedis::lose_writes`]):
//!   Redis replicates scripts atomically, so a promoted replica holds a
//!   prefix of the primary's writes;
//! - a connection that drops a reply after the command ran, or runs a
//!   script twice (a client re-sending after a dropped connection).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use mlua::{Lua, MultiValue, Value as LuaValue, Variadic};
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    ZSet(BTreeMap<Vec<u8>, f64>),
    Set(BTreeSet<Vec<u8>>),
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Keyspace {
    data: BTreeMap<Vec<u8>, Entry>,
    expires: BTreeMap<Vec<u8>, i64>,
}

/// What the connection does wrong, decided per call by the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Glitch {
    #[default]
    None,
    /// Refused before running: the slot has no primary (mid-failover).
    Unavailable,
    /// Ran, but the reply was lost: the caller sees a dropped connection.
    ReplyLost,
    /// A script ran twice; the caller sees the second reply.
    RunTwice,
}

type GlitchFn = Box<dyn FnMut(&str) -> Glitch + Send>;
type WriteWatchFn = Box<dyn FnMut(&View<'_>) + Send>;

/// The keyspace as a write left it, for [`SimRedis::watch_writes`].
pub struct View<'a>(&'a Keyspace);

impl View<'_> {
    /// A string key's integer value; 0 when missing or not a number.
    pub fn int(&self, key: &str) -> i64 {
        match self.0.data.get(key.as_bytes()) {
            Some(Entry::Str(v)) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        }
    }
    /// A hash key's fields and values (empty when missing).
    pub fn hash(&self, key: &str) -> Vec<(String, String)> {
        match self.0.data.get(key.as_bytes()) {
            Some(Entry::Hash(h)) => h
                .iter()
                .map(|(f, v)| {
                    (
                        String::from_utf8_lossy(f).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }
    pub fn exists(&self, key: &str) -> bool {
        self.0.data.contains_key(key.as_bytes())
    }
}

use super::keys::hash_tag;

/// One write a failover may still lose: the slots it changed, and the
/// keyspace before it.
struct Write {
    slots: BTreeSet<Vec<u8>>,
    before: Keyspace,
}

/// The slots (hash tags) whose keys differ between two keyspaces.
fn changed_slots(before: &Keyspace, after: &Keyspace) -> BTreeSet<Vec<u8>> {
    fn diff<V: PartialEq>(
        a: &BTreeMap<Vec<u8>, V>,
        b: &BTreeMap<Vec<u8>, V>,
        out: &mut BTreeSet<Vec<u8>>,
    ) {
        for (k, v) in a {
            if b.get(k) != Some(v) {
                out.insert(hash_tag(k).to_vec());
            }
        }
        for k in b.keys().filter(|k| !a.contains_key(*k)) {
            out.insert(hash_tag(k).to_vec());
        }
    }
    let mut slots = BTreeSet::new();
    diff(&before.data, &after.data, &mut slots);
    diff(&before.expires, &after.expires, &mut slots);
    slots
}

struct Db {
    keys: Keyspace,
    /// Writes a failover may still lose, newest last: what it rolls back to.
    history: Vec<Write>,
    scripts: HashMap<String, String>,
    now_ms: i64,
    glitch: Option<GlitchFn>,
    watch_writes: Option<WriteWatchFn>,
}

impl Db {
    /// `slot`'s keys as `past` holds them, every other slot's as they are;
    /// what the slot lost is lost for good: an older snapshot taken by a
    /// later failover of every shard must not bring it back.
    fn restore_slot(&mut self, slot: &[u8], past: &Keyspace) {
        let in_slot = |k: &Vec<u8>| hash_tag(k) == slot;
        self.keys.data.retain(|k, _| !in_slot(k));
        self.keys.expires.retain(|k, _| !in_slot(k));
        for (k, v) in past.data.iter().filter(|(k, _)| in_slot(k)) {
            self.keys.data.insert(k.clone(), v.clone());
        }
        for (k, t) in past.expires.iter().filter(|(k, _)| in_slot(k)) {
            self.keys.expires.insert(k.clone(), *t);
        }
        let restored = self.keys.clone();
        for w in &mut self.history {
            w.slots.remove(slot);
            w.before.data.retain(|k, _| !in_slot(k));
            w.before.expires.retain(|k, _| !in_slot(k));
            for (k, v) in restored.data.iter().filter(|(k, _)| in_slot(k)) {
                w.before.data.insert(k.clone(), v.clone());
            }
            for (k, t) in restored.expires.iter().filter(|(k, _)| in_slot(k)) {
                w.before.expires.insert(k.clone(), *t);
            }
        }
        self.history.retain(|w| !w.slots.is_empty());
        self.written();
    }

    fn written(&mut self) {
        if let Some(f) = self.watch_writes.as_mut() {
            f(&View(&self.keys));
        }
    }
}

/// Cheap to clone: clones share one keyspace.
#[derive(Clone)]
pub struct SimRedis {
    db: Arc<Mutex<Db>>,
    lua: Arc<Mutex<Lua>>,
}

/// Writes remembered for [`SimRedis::lose_writes`].
const HISTORY: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn err(msg: impl Into<String>) -> RedisError {
    RedisError::from((ErrorKind::Extension, "simulated redis", msg.into()))
}

fn dropped() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "simulated connection drop",
    ))
}

fn int(arg: &[u8]) -> RedisResult<i64> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err("ERR value is not an integer or out of range"))
}

fn float(arg: &[u8]) -> RedisResult<f64> {
    match arg {
        b"-inf" => Ok(f64::NEG_INFINITY),
        b"+inf" | b"inf" => Ok(f64::INFINITY),
        _ => std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("ERR value is not a valid float")),
    }
}

fn bulk(v: &[u8]) -> Value {
    Value::BulkString(v.to_vec())
}

fn sha1_hex(src: &str) -> String {
    sha1_smol::Sha1::from(src).digest().to_string()
}

impl Keyspace {
    fn purge(&mut self, now: i64) {
        let gone: Vec<Vec<u8>> = self
            .expires
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.expires.remove(&k);
            self.data.remove(&k);
        }
    }

    fn hash(&mut self, key: &[u8]) -> RedisResult<&mut BTreeMap<Vec<u8>, Vec<u8>>> {
        match self
            .data
            .entry(key.to_vec())
            .or_insert_with(|| Entry::Hash(BTreeMap::new()))
        {
            Entry::Hash(h) => Ok(h),
            _ => Err(err("WRONGTYPE")),
        }
    }

    fn get_hash(&self, key: &[u8]) -> RedisResult<Option<&BTreeMap<Vec<u8>, Vec<u8>>>> {
        match self.data.get(key) {
            None => Ok(None),
            Some(Entry::Hash(h)) => Ok(Some(h)),
            Some(_) => Err(err("WRONGTYPE")),
        }
    }

    fn zset(&mut self, key: &[u8]) -> RedisResult<&mut BTreeMap<Vec<u8>, f64>> {
        match self
            .data
            .entry(key.to_vec())
            .or_insert_with(|| Entry::ZSet(BTreeMap::new()))
        {
            Entry::ZSet(z) => Ok(z),
            _ => Err(err("WRONGTYPE")),
        }
    }

    fn set(&mut self, key: &[u8]) -> RedisResult<&mut BTreeSet<Vec<u8>>> {
        match self
            .data
            .entry(key.to_vec())
            .or_insert_with(|| Entry::Set(BTreeSet::new()))
        {
            Entry::Set(s) => Ok(s),
            _ => Err(err("WRONGTYPE")),
        }
    }

    fn get_str(&self, key: &[u8]) -> RedisResult<Option<&[u8]>> {
        match self.data.get(key) {
            None => Ok(None),
            Some(Entry::Str(s)) => Ok(Some(s)),
            Some(_) => Err(err("WRONGTYPE")),
        }
    }

    /// Empty containers do not exist in Redis.
    fn tidy(&mut self, key: &[u8]) {
        let empty = match self.data.get(key) {
            Some(Entry::Hash(h)) => h.is_empty(),
            Some(Entry::ZSet(z)) => z.is_empty(),
            Some(Entry::Set(s)) => s.is_empty(),
            _ => false,
        };
        if empty {
            self.data.remove(key);
            self.expires.remove(key);
        }
    }

    fn incr(&mut self, key: &[u8], by: i64) -> RedisResult<Value> {
        let cur = self.get_str(key)?.map(int).transpose()?.unwrap_or(0);
        let next = cur + by;
        self.data
            .insert(key.to_vec(), Entry::Str(next.to_string().into_bytes()));
        Ok(Value::Int(next))
    }

    /// One command; `args[0]` is its name.
    fn exec(&mut self, now: i64, args: &[Vec<u8>]) -> RedisResult<Value> {
        self.purge(now);
        let name = String::from_utf8_lossy(args.first().ok_or_else(|| err("ERR empty"))?)
            .to_ascii_uppercase();
        let a = &args[1..];
        let need = |n: usize| {
            if a.len() < n {
                Err(err(format!("ERR wrong number of arguments for '{name}'")))
            } else {
                Ok(())
            }
        };
        match name.as_str() {
            "TIME" => Ok(Value::Array(vec![
                bulk((now / 1000).to_string().as_bytes()),
                bulk(((now % 1000) * 1000).to_string().as_bytes()),
            ])),
            "GET" => {
                need(1)?;
                Ok(self.get_str(&a[0])?.map_or(Value::Nil, bulk))
            }
            "SET" => {
                need(2)?;
                let nx = a[2..].iter().any(|o| o.eq_ignore_ascii_case(b"NX"));
                if nx && self.data.contains_key(&a[0]) {
                    return Ok(Value::Nil);
                }
                self.data.insert(a[0].clone(), Entry::Str(a[1].clone()));
                self.expires.remove(&a[0]);
                for (unit, ms) in [(&b"EX"[..], 1000), (&b"PX"[..], 1)] {
                    if let Some(i) = a.iter().position(|o| o.eq_ignore_ascii_case(unit)) {
                        let n = int(a.get(i + 1).ok_or_else(|| err("ERR syntax error"))?)?;
                        self.expires.insert(a[0].clone(), now + n * ms);
                    }
                }
                Ok(Value::Okay)
            }
            "INCRBY" | "DECRBY" => {
                need(2)?;
                let by = int(&a[1])?;
                self.incr(&a[0], if name == "INCRBY" { by } else { -by })
            }
            "DEL" => {
                let mut n = 0;
                for k in a {
                    self.expires.remove(k);
                    n += i64::from(self.data.remove(k).is_some());
                }
                Ok(Value::Int(n))
            }
            "EXISTS" => Ok(Value::Int(
                a.iter().filter(|k| self.data.contains_key(*k)).count() as i64,
            )),
            "EXPIRE" => {
                need(2)?;
                if !self.data.contains_key(&a[0]) {
                    return Ok(Value::Int(0));
                }
                self.expires.insert(a[0].clone(), now + int(&a[1])? * 1000);
                Ok(Value::Int(1))
            }
            "TTL" => {
                need(1)?;
                Ok(Value::Int(
                    match (self.data.get(&a[0]), self.expires.get(&a[0])) {
                        (None, _) => -2,
                        (Some(_), None) => -1,
                        (Some(_), Some(at)) => (at - now) / 1000,
                    },
                ))
            }
            "HSET" => {
                need(3)?;
                let h = self.hash(&a[0])?;
                let mut added = 0;
                for pair in a[1..].chunks(2) {
                    let [f, v] = pair else {
                        return Err(err("ERR wrong number of arguments for 'HSET'"));
                    };
                    added += i64::from(h.insert(f.clone(), v.clone()).is_none());
                }
                Ok(Value::Int(added))
            }
            "HGET" => {
                need(2)?;
                Ok(self
                    .get_hash(&a[0])?
                    .and_then(|h| h.get(&a[1]))
                    .map_or(Value::Nil, |v| bulk(v)))
            }
            "HMGET" => {
                need(2)?;
                let h = self.get_hash(&a[0])?;
                Ok(Value::Array(
                    a[1..]
                        .iter()
                        .map(|f| h.and_then(|h| h.get(f)).map_or(Value::Nil, |v| bulk(v)))
                        .collect(),
                ))
            }
            "HGETALL" => {
                need(1)?;
                let mut out = Vec::new();
                for (f, v) in self.get_hash(&a[0])?.into_iter().flatten() {
                    out.push(bulk(f));
                    out.push(bulk(v));
                }
                Ok(Value::Array(out))
            }
            "HKEYS" => {
                need(1)?;
                Ok(Value::Array(
                    self.get_hash(&a[0])?
                        .into_iter()
                        .flatten()
                        .map(|(f, _)| bulk(f))
                        .collect(),
                ))
            }
            "HSETNX" => {
                need(3)?;
                let h = self.hash(&a[0])?;
                if h.contains_key(&a[1]) {
                    return Ok(Value::Int(0));
                }
                h.insert(a[1].clone(), a[2].clone());
                Ok(Value::Int(1))
            }
            "HEXISTS" => {
                need(2)?;
                let found = self.get_hash(&a[0])?.is_some_and(|h| h.contains_key(&a[1]));
                Ok(Value::Int(i64::from(found)))
            }
            "HDEL" => {
                need(2)?;
                let h = self.hash(&a[0])?;
                let n = a[1..].iter().filter(|f| h.remove(*f).is_some()).count();
                self.tidy(&a[0]);
                Ok(Value::Int(n as i64))
            }
            "HINCRBY" => {
                need(3)?;
                let by = int(&a[2])?;
                let h = self.hash(&a[0])?;
                let cur = h.get(&a[1]).map(|v| int(v)).transpose()?.unwrap_or(0);
                h.insert(a[1].clone(), (cur + by).to_string().into_bytes());
                Ok(Value::Int(cur + by))
            }
            "ZADD" => {
                need(3)?;
                let z = self.zset(&a[0])?;
                let mut added = 0;
                for pair in a[1..].chunks(2) {
                    let [score, member] = pair else {
                        return Err(err("ERR syntax error"));
                    };
                    added += i64::from(z.insert(member.clone(), float(score)?).is_none());
                }
                Ok(Value::Int(added))
            }
            "ZREM" => {
                need(2)?;
                let z = self.zset(&a[0])?;
                let n = a[1..].iter().filter(|m| z.remove(*m).is_some()).count();
                self.tidy(&a[0]);
                Ok(Value::Int(n as i64))
            }
            "ZCARD" => {
                need(1)?;
                Ok(Value::Int(match self.data.get(&a[0]) {
                    Some(Entry::ZSet(z)) => z.len() as i64,
                    _ => 0,
                }))
            }
            "ZCOUNT" => {
                need(3)?;
                let (min, max) = (float(&a[1])?, float(&a[2])?);
                Ok(Value::Int(match self.data.get(&a[0]) {
                    Some(Entry::ZSet(z)) => {
                        z.values().filter(|s| **s >= min && **s <= max).count() as i64
                    }
                    _ => 0,
                }))
            }
            "ZRANGEBYSCORE" => {
                need(3)?;
                let (min, max) = (float(&a[1])?, float(&a[2])?);
                let (offset, count) = match a.iter().position(|o| o.eq_ignore_ascii_case(b"LIMIT"))
                {
                    Some(i) if a.len() > i + 2 => (int(&a[i + 1])? as usize, int(&a[i + 2])?),
                    _ => (0, -1),
                };
                let mut members: Vec<(f64, &Vec<u8>)> = match self.data.get(&a[0]) {
                    Some(Entry::ZSet(z)) => z
                        .iter()
                        .filter(|(_, s)| **s >= min && **s <= max)
                        .map(|(m, s)| (*s, m))
                        .collect(),
                    _ => Vec::new(),
                };
                members.sort_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.cmp(y.1)));
                let take = if count < 0 {
                    usize::MAX
                } else {
                    count as usize
                };
                Ok(Value::Array(
                    members
                        .into_iter()
                        .skip(offset)
                        .take(take)
                        .map(|(_, m)| bulk(m))
                        .collect(),
                ))
            }
            "SADD" => {
                need(2)?;
                let s = self.set(&a[0])?;
                let n = a[1..].iter().filter(|m| s.insert((*m).clone())).count();
                Ok(Value::Int(n as i64))
            }
            "SREM" => {
                need(2)?;
                let s = self.set(&a[0])?;
                let n = a[1..].iter().filter(|m| s.remove(*m)).count();
                self.tidy(&a[0]);
                Ok(Value::Int(n as i64))
            }
            "SMEMBERS" => {
                need(1)?;
                Ok(Value::Array(match self.data.get(&a[0]) {
                    Some(Entry::Set(s)) => s.iter().map(|m| bulk(m)).collect(),
                    _ => Vec::new(),
                }))
            }
            other => Err(err(format!(
                "ERR unknown command '{other}' (not simulated)"
            ))),
        }
    }
}

fn to_lua(lua: &Lua, v: Value) -> mlua::Result<LuaValue> {
    Ok(match v {
        Value::Nil => LuaValue::Boolean(false),
        Value::Int(i) => LuaValue::Number(i as f64),
        Value::BulkString(b) => LuaValue::String(lua.create_string(&b)?),
        Value::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.into_iter().enumerate() {
                t.set(i + 1, to_lua(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Okay => {
            let t = lua.create_table()?;
            t.set("ok", "OK")?;
            LuaValue::Table(t)
        }
        other => {
            return Err(mlua::Error::RuntimeError(format!(
                "unsimulated reply {other:?}"
            )));
        }
    })
}

/// Redis' conversion of a script's return value.
fn from_lua(v: LuaValue) -> RedisResult<Value> {
    Ok(match v {
        LuaValue::Nil | LuaValue::Boolean(false) => Value::Nil,
        LuaValue::Boolean(true) => Value::Int(1),
        LuaValue::Integer(i) => Value::Int(i),
        LuaValue::Number(n) => Value::Int(n as i64),
        LuaValue::String(s) => Value::BulkString(s.as_bytes().to_vec()),
        LuaValue::Table(t) => {
            if let Ok(LuaValue::String(e)) = t.get::<LuaValue>("err") {
                return Err(err(e.to_string_lossy()));
            }
            if let Ok(LuaValue::String(_)) = t.get::<LuaValue>("ok") {
                return Ok(Value::Okay);
            }
            let mut out = Vec::new();
            for i in 1.. {
                match t.get::<LuaValue>(i) {
                    Ok(LuaValue::Nil) | Err(_) => break,
                    Ok(item) => out.push(from_lua(item)?),
                }
            }
            Value::Array(out)
        }
        other => return Err(err(format!("unsupported script reply {other:?}"))),
    })
}

fn lua_arg(v: &LuaValue) -> mlua::Result<Vec<u8>> {
    match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Number(n) if n.fract() == 0.0 => Ok((*n as i64).to_string().into_bytes()),
        LuaValue::Number(n) => Ok(format!("{n}").into_bytes()),
        LuaValue::Integer(i) => Ok(i.to_string().into_bytes()),
        other => Err(mlua::Error::RuntimeError(format!(
            "Lua redis() command arguments must be strings or integers, got {}",
            other.type_name()
        ))),
    }
}

impl SimRedis {
    /// An empty Redis whose clock reads `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        let db = Arc::new(Mutex::new(Db {
            keys: Keyspace::default(),
            history: Vec::new(),
            scripts: HashMap::new(),
            now_ms,
            glitch: None,
            watch_writes: None,
        }));
        let lua = Lua::new();
        if let Err(e) = Self::install_api(&lua, db.clone()) {
            // Only a broken mlua build gets here; fail every script loudly.
            tracing::error!(error = %e, "simulated redis: cannot set up Lua");
        }
        Self {
            db,
            lua: Arc::new(Mutex::new(lua)),
        }
    }

    fn install_api(lua: &Lua, db: Arc<Mutex<Db>>) -> mlua::Result<()> {
        let redis = lua.create_table()?;
        let call = lua.create_function(move |lua, args: Variadic<LuaValue>| {
            let args = args.iter().map(lua_arg).collect::<mlua::Result<Vec<_>>>()?;
            let mut db = lock(&db);
            let now = db.now_ms;
            let reply = db
                .keys
                .exec(now, &args)
                .map_err(|e| mlua::Error::RuntimeError(e.to_string()))?;
            to_lua(lua, reply)
        })?;
        redis.set("call", call)?;
        redis.set(
            "error_reply",
            lua.create_function(|lua, msg: String| {
                let t = lua.create_table()?;
                t.set("err", msg)?;
                Ok(t)
            })?,
        )?;
        redis.set(
            "status_reply",
            lua.create_function(|lua, msg: String| {
                let t = lua.create_table()?;
                t.set("ok", msg)?;
                Ok(t)
            })?,
        )?;
        lua.globals().set("redis", redis)?;
        Ok(())
    }

    pub fn now_ms(&self) -> i64 {
        lock(&self.db).now_ms
    }

    pub fn advance(&self, ms: i64) {
        lock(&self.db).now_ms += ms;
    }

    /// Decides, per command name, what the connection does wrong.
    pub fn set_glitches(&self, f: impl FnMut(&str) -> Glitch + Send + 'static) {
        lock(&self.db).glitch = Some(Box::new(f));
    }

    /// Sees the keyspace after every command that changed it, failovers
    /// included: what no client could read atomically (several slots).
    pub fn watch_writes(&self, f: impl FnMut(&View<'_>) + Send + 'static) {
        lock(&self.db).watch_writes = Some(Box::new(f));
    }

    /// A failover to a replica that missed the last `n` writes; returns how
    /// many were actually lost (at most the remembered history).
    pub fn lose_writes(&self, n: usize) -> usize {
        let mut db = lock(&self.db);
        let n = n.min(db.history.len());
        if n > 0 {
            let at = db.history.len() - n;
            db.keys = db.history[at].before.clone();
            db.history.truncate(at);
            db.written();
        }
        n
    }

    /// A failover of the one shard serving `key`'s slot: its keys go back to
    /// where they were `n` of its writes ago, every other slot's stay as they
    /// are (a cluster fails over shard by shard). Returns how many writes
    /// back that was. Afterwards that shard's replicas have caught up; the
    /// other shards can still lose what they could before, so several slots
    /// (a product's stock buckets) fail over independently.
    pub fn lose_slot_writes(&self, key: &[u8], n: usize) -> usize {
        let mut db = lock(&self.db);
        let slot = hash_tag(key).to_vec();
        let writes: Vec<usize> = (0..db.history.len())
            .filter(|&i| db.history[i].slots.contains(&slot))
            .collect();
        let n = n.min(writes.len());
        if n == 0 {
            return 0;
        }
        let past = db.history[writes[writes.len() - n]].before.clone();
        db.restore_slot(&slot, &past);
        n
    }

    /// A failover of the one shard serving `key`'s slot to a replica that
    /// never had any of it (its warm-up included): every key of the slot
    /// gone, for good; the other slots keep theirs.
    pub fn forget_slot(&self, key: &[u8]) {
        let mut db = lock(&self.db);
        let slot = hash_tag(key).to_vec();
        db.restore_slot(&slot, &Keyspace::default());
    }

    /// Every replica has caught up: no failover can lose what is written so far.
    pub fn checkpoint(&self) {
        lock(&self.db).history.clear();
    }

    /// Runs one command directly, as a test's own client would.
    pub fn command(&self, args: &[&[u8]]) -> RedisResult<Value> {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        self.run(&args)
    }

    fn run(&self, args: &[Vec<u8>]) -> RedisResult<Value> {
        let name =
            String::from_utf8_lossy(args.first().map_or(&[][..], |a| a)).to_ascii_uppercase();
        let mut db = lock(&self.db);
        let now = db.now_ms;
        // Keys expiring are no write of this command's (a replica expires
        // them too): gone before the snapshot a failover would restore.
        db.keys.purge(now);
        // A read changes nothing: no snapshot to take or compare (most
        // calls are reads, and a keyspace copy per call is what costs).
        const READS: &[&str] = &[
            "GET",
            "EXISTS",
            "TTL",
            "HGET",
            "HMGET",
            "HGETALL",
            "HKEYS",
            "HEXISTS",
            "ZCARD",
            "ZCOUNT",
            "ZRANGEBYSCORE",
            "SMEMBERS",
            "TIME",
        ];
        let read = READS.contains(&name.as_str());
        let before = if read {
            Keyspace::default()
        } else {
            db.keys.clone()
        };
        let reply = match name.as_str() {
            "EVALSHA" | "EVAL" => {
                let src = if name == "EVAL" {
                    String::from_utf8_lossy(args.get(1).map_or(&[][..], |a| a)).into_owned()
                } else {
                    let sha =
                        String::from_utf8_lossy(args.get(1).map_or(&[][..], |a| a)).into_owned();
                    match db.scripts.get(&sha) {
                        Some(s) => s.clone(),
                        None => {
                            return Err(RedisError::from((
                                ErrorKind::Server(redis::ServerErrorKind::NoScript),
                                "NOSCRIPT No matching script.",
                            )));
                        }
                    }
                };
                drop(db);
                let reply = self.eval(&src, &args[2..]);
                db = lock(&self.db);
                reply
            }
            "SCRIPT" => {
                let src = String::from_utf8_lossy(args.get(2).map_or(&[][..], |a| a)).into_owned();
                let sha = sha1_hex(&src);
                db.scripts.insert(sha.clone(), src);
                Ok(Value::BulkString(sha.into_bytes()))
            }
            _ => db.keys.exec(now, args),
        };
        if !read && db.keys != before {
            let slots = changed_slots(&before, &db.keys);
            db.history.push(Write { slots, before });
            if db.history.len() > HISTORY {
                db.history.remove(0);
            }
            db.written();
        }
        reply
    }

    fn eval(&self, src: &str, rest: &[Vec<u8>]) -> RedisResult<Value> {
        let numkeys = int(rest
            .first()
            .ok_or_else(|| err("ERR wrong number of arguments"))?)? as usize;
        let (keys, argv) = rest[1..].split_at(numkeys.min(rest.len() - 1));
        // As a cluster refuses it: one script, one slot.
        if let Some(first) = keys.first()
            && keys.iter().any(|k| hash_tag(k) != hash_tag(first))
        {
            return Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
                "CROSSSLOT Keys in request don't hash to the same slot",
            )));
        }
        let lua = lock(&self.lua);
        let run = || -> mlua::Result<LuaValue> {
            let g = lua.globals();
            let list = |items: &[Vec<u8>]| -> mlua::Result<mlua::Table> {
                let t = lua.create_table()?;
                for (i, item) in items.iter().enumerate() {
                    t.set(i + 1, lua.create_string(item)?)?;
                }
                Ok(t)
            };
            g.set("KEYS", list(keys)?)?;
            g.set("ARGV", list(argv)?)?;
            lua.load(src)
                .call::<MultiValue>(())
                .map(|mut v| v.pop_front().unwrap_or(LuaValue::Nil))
        };
        match run() {
            Ok(v) => from_lua(v),
            Err(e) => Err(err(format!("ERR script failed: {e}"))),
        }
    }

    async fn request(&self, args: Vec<Vec<u8>>) -> RedisResult<Value> {
        // Every command is a point where other tasks may run.
        tokio::task::yield_now().await;
        let name =
            String::from_utf8_lossy(args.first().map_or(&[][..], |a| a)).to_ascii_uppercase();
        let glitch = {
            let mut db = lock(&self.db);
            db.glitch.as_mut().map_or(Glitch::None, |g| g(&name))
        };
        match glitch {
            Glitch::None => self.run(&args),
            Glitch::Unavailable => Err(dropped()),
            Glitch::ReplyLost => {
                let _ = self.run(&args);
                Err(dropped())
            }
            Glitch::RunTwice => {
                let _ = self.run(&args);
                self.run(&args)
            }
        }
    }

    /// The keyspace as text, one key a line: for a failing seed's report.
    pub fn dump(&self) -> String {
        let db = lock(&self.db);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut out = String::new();
        for (k, v) in &db.keys.data {
            let value = match v {
                Entry::Str(s) => text(s),
                Entry::Hash(h) => format!(
                    "{:?}",
                    h.iter()
                        .map(|(f, v)| (text(f), text(v)))
                        .collect::<Vec<_>>()
                ),
                Entry::ZSet(z) => format!("{:?}", z.keys().map(|m| text(m)).collect::<Vec<_>>()),
                Entry::Set(s) => format!("{:?}", s.iter().map(|m| text(m)).collect::<Vec<_>>()),
            };
            out.push_str(&format!("{} = {value}\n", text(k)));
        }
        out
    }

    /// Registers scripts by SHA as `SCRIPT LOAD` would.
    pub fn load(&self, src: &str) {
        lock(&self.db).scripts.insert(sha1_hex(src), src.to_owned());
    }
}

fn cmd_args(cmd: &Cmd) -> Vec<Vec<u8>> {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => b.to_vec(),
            _ => b"0".to_vec(),
        })
        .collect()
}

impl ConnectionLike for SimRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let args = cmd_args(cmd);
        Box::pin(async move { self.request(args).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let cmds: Vec<Vec<Vec<u8>>> = pipeline.cmd_iter().map(cmd_args).collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(cmds.len());
            for args in cmds {
                out.push(self.request(args).await?);
            }
            Ok(out.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(r: &SimRedis, key: &str) -> Value {
        r.command(&[b"GET", key.as_bytes()]).unwrap()
    }

    fn set(r: &SimRedis, key: &str, v: &str) {
        r.command(&[b"SET", key.as_bytes(), v.as_bytes()]).unwrap();
    }

    #[test]
    fn slots_fail_over_independently() {
        let r = SimRedis::new(0);
        let one = || Value::BulkString(b"1".to_vec());
        set(&r, "{a}:x", "1");
        set(&r, "{b}:x", "1");
        set(&r, "{a}:x", "2");
        set(&r, "{b}:x", "2");
        assert_eq!(r.lose_slot_writes(b"{a}:x", 1), 1);
        assert_eq!(get(&r, "{a}:x"), one());
        assert_eq!(get(&r, "{b}:x"), Value::BulkString(b"2".to_vec()));
        // {b} can still lose its own last write after {a}'s failover ...
        assert_eq!(r.lose_slot_writes(b"{b}:x", 1), 1);
        assert_eq!(get(&r, "{b}:x"), one());
        // ... while {a}'s replicas have caught up.
        assert_eq!(r.lose_slot_writes(b"{a}:x", 5), 0);
        assert_eq!(get(&r, "{a}:x"), one());
    }

    #[test]
    fn what_one_slot_lost_stays_lost_when_every_shard_fails_over_later() {
        let r = SimRedis::new(0);
        set(&r, "{a}:x", "1");
        set(&r, "{b}:x", "1");
        set(&r, "{a}:x", "2");
        set(&r, "{b}:x", "2");
        assert_eq!(r.lose_slot_writes(b"{a}:x", 1), 1);
        // Back one write of every shard: {b}'s last; {a} keeps its "1".
        assert_eq!(r.lose_writes(1), 1);
        assert_eq!(get(&r, "{a}:x"), Value::BulkString(b"1".to_vec()));
        assert_eq!(get(&r, "{b}:x"), Value::BulkString(b"1".to_vec()));
    }

    #[test]
    fn a_script_spanning_two_slots_is_refused_as_a_cluster_refuses_it() {
        let r = SimRedis::new(0);
        let e = r
            .command(&[b"EVAL", b"return 1", b"2", b"{a}:x", b"{b}:x"])
            .unwrap_err();
        assert!(e.to_string().contains("CROSSSLOT"), "{e}");
        assert!(
            r.command(&[b"EVAL", b"return 1", b"2", b"{a}:x", b"{a}:y"])
                .is_ok()
        );
    }
}
