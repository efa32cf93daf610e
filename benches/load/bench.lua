-- wrk script of the load benchmark: every request is GET /cart with a random
-- X-User-Id (so the split, the whitelist lookup and the hashing run on every
-- request), over wrk's keep-alive connections. done() prints one
-- machine-readable line that run.sh parses.

local users = tonumber(os.getenv("BENCH_USERS") or "") or 1000000
local path = os.getenv("BENCH_PATH") or "/cart"
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("thread_id", counter)
end

function init(args)
   math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

function request()
   return wrk.format("GET", path, { ["Host"] = "bench", ["X-User-Id"] = tostring(math.random(2000, users)) })
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d "
         .. "err_connect=%d err_read=%d err_write=%d err_timeout=%d err_status=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
      e.connect, e.read, e.write, e.timeout, e.status))
end
