//! The shared store: one Redis (or anything that speaks its protocol),
//! reached through the `redis` crate's multiplexed connection. Every call has
//! a deadline (`[cluster] timeout`); a failed call drops the connection so
//! the next one reconnects. Only the sync task and the subscriber talk to
//! the store: the request path never waits on it.
//!
//! Keys, under `key_prefix`:
//! - `state`: a hash of shared records, field `block:<cidr>` or `degrade`,
//!   value the record's JSON (`record::SharedRecord`);
//! - `changes`: the pub/sub channel every change is published on;
//! - `rl:<limit>:<key hash>`: a cluster rate limit's GCRA time for one key.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Script, TlsCertificates};

use crate::config::ClusterSpec;

/// Why a store call failed. The request path never sees one: it is counted,
/// shown in `/api/status`, and the call is retried by the sync task.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the store: {0}")]
    Connect(redis::RedisError),
    /// The store answered, with an error (a wrong key type, a refused
    /// write): it is reachable, so this does not make it "unreachable".
    #[error("the store refused the call: {0}")]
    Command(redis::RedisError),
}

impl StoreError {
    /// Whether the store is out of reach (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, StoreError::Command(_))
    }
}

/// Writes a record unless the store holds a newer one for the same field
/// ("latest change wins", by `at_ms`, then `origin`), and publishes it.
/// Returns nil when written, else the store's record (equal or newer).
/// Replica names are compared byte by byte, as Rust compares strings (Lua's
/// `<` on strings follows the server's locale).
const PUT_IF_NEWER: &str = r"
local function bytes_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and type(c.at_ms) == 'number' then
    local at = tonumber(ARGV[2])
    if c.at_ms > at or (c.at_ms == at and not bytes_before(tostring(c.origin), ARGV[3])) then
      return cur
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return false
";

/// Deletes a spent record only if it is still the record the caller read.
const DELETE_IF_SAME: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

/// GCRA for a batch of keys of one limit, on the store's clock: each key's
/// theoretical arrival time (µs) moves `count` intervals past
/// max(itself, now). Returns, per key, how far it is ahead of now (µs).
const GCRA_BATCH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then tat = now end
  tat = tat + tonumber(ARGV[i + 1]) * interval
  local ahead = tat - now
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor(ahead / 1000) + 1000)
  out[i] = ahead
end
return out
";

/// Writes a record only if the store still holds the one the caller's
/// decision started from (`at_ms`/`origin` of the base; empty: none), and
/// publishes it. Returns nil when written, else the store's record.
const PUT_IF_BASE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  local same = ok and type(c) == 'table' and ARGV[2] ~= ''
    and c.at_ms == tonumber(ARGV[2]) and tostring(c.origin) == ARGV[3]
  if not same then
    return cur
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return false
";

/// Takes the lease if it is free, renews it if this replica holds it.
const LEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Key names under the fleet's prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    pub state: String,
    pub channel: String,
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { state: format!("{prefix}state"), channel: format!("{prefix}changes"), prefix: prefix.to_string() }
    }

    /// The lease of the replica that evaluates rollouts.
    pub fn rollout_lease(&self) -> String {
        format!("{}lease:rollouts", self.prefix)
    }

    /// The fleet's counters of one route for one interval (numbered since the epoch).
    pub fn rollout_window(&self, route: &str, interval_no: u64) -> String {
        format!("{}ro:{route}:{interval_no}", self.prefix)
    }

    /// The key of one cluster rate-limit bucket.
    pub fn limit(&self, limit: &str, key_hash: u64) -> String {
        format!("{}rl:{limit}:{key_hash:016x}", self.prefix)
    }
}

pub struct Store {
    client: Client,
    conn: Option<MultiplexedConnection>,
    pub keys: Keys,
    timeout: Duration,
    put: Script,
    delete: Script,
    gcra: Script,
    lease: Script,
    put_if_base: Script,
}

impl Store {
    /// Prepare the client; nothing connects yet. Fails only on a URL that
    /// `gateway check` would have refused.
    pub fn new(spec: &ClusterSpec) -> Result<Store, StoreError> {
        let mut info = spec.redis_url.as_str().into_connection_info().map_err(StoreError::Connect)?;
        if let Some(password) = &spec.password {
            let settings = info.redis_settings().clone().set_password(&password.0);
            info = info.set_redis_settings(settings);
        }
        let client = match &spec.ca_pem {
            // rediss:// with the config's CA instead of the system's roots.
            Some(pem) => {
                Client::build_with_tls(info, TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) })
            }
            None => Client::open(info),
        }
        .map_err(StoreError::Connect)?;
        Ok(Store {
            client,
            conn: None,
            keys: Keys::new(&spec.key_prefix),
            timeout: spec.timeout,
            put: Script::new(PUT_IF_NEWER),
            delete: Script::new(DELETE_IF_SAME),
            gcra: Script::new(GCRA_BATCH),
            lease: Script::new(LEASE),
            put_if_base: Script::new(PUT_IF_BASE),
        })
    }

    /// A client for the subscriber's own connection (pub/sub needs one).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn conn(&mut self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        // Deadlines are per call (`call`): a full read may take longer than a write.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.read_timeout()));
        let connect = self.client.get_multiplexed_async_connection_with_config(&config);
        let conn = match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(StoreError::Connect(e)),
            Ok(Ok(c)) => c,
        };
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// A full read's deadline: ten calls' worth, at least 2 s (a large
    /// shared state must not look like an unreachable store).
    fn read_timeout(&self) -> Duration {
        (self.timeout * 10).max(Duration::from_secs(2))
    }

    /// Run one call with the deadline; a failure to reach the store drops the connection.
    async fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let deadline = self.timeout;
        self.call_within(deadline, f).await
    }

    async fn call_within<T>(
        &mut self,
        deadline: Duration,
        f: impl AsyncFnOnce(MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let conn = self.conn().await?;
        let result = match tokio::time::timeout(deadline, f(conn)).await {
            Err(_) => Err(StoreError::Timeout(deadline)),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => Err(StoreError::Connect(e)),
            Ok(Err(e)) => Err(StoreError::Command(e)),
            Ok(Ok(v)) => Ok(v),
        };
        if result.as_ref().is_err_and(StoreError::is_unreachable) {
            self.conn = None;
        }
        result
    }

    /// Write each record (field, at_ms, origin, JSON) unless the store has
    /// a newer one for its field, and publish it; sent together (the
    /// connection pipelines them). Per record, `None`: written;
    /// `Some(record)`: the store's record won (or was this one already).
    pub async fn put_all(
        &mut self,
        records: &[(String, u64, String, String)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let (state, channel) = (self.keys.state.clone(), self.keys.channel.clone());
        let script = self.put.clone();
        let deadline = self.read_timeout();
        self.call_within(deadline, async move |c| {
            let calls = records.iter().map(|(field, at_ms, origin, json)| {
                let (mut c, script, state, channel) = (c.clone(), &script, &state, &channel);
                async move {
                    script
                        .key(state)
                        .arg(field)
                        .arg(*at_ms)
                        .arg(origin)
                        .arg(json)
                        .arg(channel)
                        .arg(super::record::message(field, json))
                        .invoke_async::<Option<String>>(&mut c)
                        .await
                }
            });
            futures_util::future::join_all(calls).await.into_iter().collect()
        })
        .await
    }

    /// Delete `field` if it still holds `json` (a spent record).
    pub async fn delete_if_same(&mut self, field: &str, json: &str) -> Result<(), StoreError> {
        let state = self.keys.state.clone();
        let script = self.delete.clone();
        self.call(async move |mut c| script.key(&state).arg(field).arg(json).invoke_async::<i64>(&mut c).await)
            .await
            .map(|_| ())
    }

    /// One shared record (`None` when the store has none).
    pub async fn record(&mut self, field: &str) -> Result<Option<String>, StoreError> {
        let state = self.keys.state.clone();
        self.call(async move |mut c| {
            redis::cmd("HGET").arg(&state).arg(field).query_async::<Option<String>>(&mut c).await
        })
        .await
    }

    /// Write `json` for `field` only if the store still holds `base` (see
    /// [`PUT_IF_BASE`]); `Ok(None)`: written and published; `Ok(Some(record))`: someone else's change won.
    pub async fn put_if_base(
        &mut self,
        field: &str,
        base: Option<(u64, &str)>,
        json: &str,
    ) -> Result<Option<String>, StoreError> {
        let (state, channel) = (self.keys.state.clone(), self.keys.channel.clone());
        let script = self.put_if_base.clone();
        let (base_at, base_origin) =
            base.map_or((String::new(), String::new()), |(a, o)| (a.to_string(), o.to_string()));
        self.call(async move |mut c| {
            script
                .key(&state)
                .arg(field)
                .arg(&base_at)
                .arg(&base_origin)
                .arg(json)
                .arg(&channel)
                .arg(super::record::message(field, json))
                .invoke_async::<Option<String>>(&mut c)
                .await
        })
        .await
    }

    /// Hold (take or renew) the lease `key` as `me` for `ttl`; `true` when this replica holds it.
    pub async fn lease(&mut self, key: &str, me: &str, ttl: Duration) -> Result<bool, StoreError> {
        let script = self.lease.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.call(async move |mut c| script.key(key).arg(me).arg(ttl_ms).invoke_async::<i64>(&mut c).await)
            .await
            .map(|held| held == 1)
    }

    /// Add `fields` to the counters hash `key` (kept for `ttl`).
    pub async fn add_counts(&mut self, key: &str, fields: &[(String, i64)], ttl: Duration) -> Result<(), StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.call(async move |mut c| {
            let mut pipe = redis::pipe();
            for (field, n) in fields {
                pipe.cmd("HINCRBY").arg(key).arg(field).arg(*n).ignore();
            }
            pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms).ignore();
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// The counters hash `key` (empty when no replica wrote it).
    pub async fn counts(&mut self, key: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(async move |mut c| redis::cmd("HGETALL").arg(key).query_async::<Vec<(String, i64)>>(&mut c).await)
            .await
    }

    /// A liveness check, once a second while the store is up.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        self.call(async move |mut c| redis::cmd("PING").query_async::<String>(&mut c).await).await.map(|_| ())
    }

    /// Every shared record, as (field, JSON) bytes: a field that is not
    /// UTF-8 is the caller's to skip, not a failed read.
    pub async fn read_all(&mut self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let key = self.keys.state.clone();
        let deadline = self.read_timeout();
        self.call_within(deadline, async move |mut c| {
            redis::cmd("HGETALL").arg(&key).query_async::<Vec<(Vec<u8>, Vec<u8>)>>(&mut c).await
        })
        .await
    }

    /// Count `counts[i]` requests for `keys[i]` of one limit (`interval_us`
    /// per request); returns how far each key's time is ahead of the store's now (µs).
    pub async fn gcra(&mut self, keys: &[String], interval_us: u64, counts: &[u32]) -> Result<Vec<i64>, StoreError> {
        let script = self.gcra.clone();
        let keys = keys.to_vec();
        let counts = counts.to_vec();
        self.call(async move |mut c| {
            let mut invocation = script.prepare_invoke();
            for k in &keys {
                invocation.key(k);
            }
            invocation.arg(interval_us);
            for n in &counts {
                invocation.arg(*n);
            }
            invocation.invoke_async::<Vec<i64>>(&mut c).await
        })
        .await
    }
}
