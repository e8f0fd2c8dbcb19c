-- Shared by the wrk scripts of `make bench` (bench/bench.py sets the environment):
--   BENCH_USERS    a Lua file returning the list of user ids (md5(i)::uuid, i = 1..N, as seeded)
--   BENCH_API_KEY  the API key (read, write, admin) created for the run
--   BENCH_SEED     a random number chosen per run, so no two runs (or threads) repeat keys
local M = {}

M.users = dofile(os.getenv("BENCH_USERS"))
M.api_key = os.getenv("BENCH_API_KEY")

local seed = tonumber(os.getenv("BENCH_SEED") or "0")
-- BENCH_RAW=1 (bench.py sets it when every wrk thread has exactly one connection, so that
-- request() and response() of a thread alternate): each thread also times every request
-- itself. wrk's own percentiles are corrected for coordinated omission (after a stall it adds
-- the requests a steady client would have sent meanwhile); these are the measured ones.
local raw = os.getenv("BENCH_RAW") == "1"
local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local clock = ffi.new("bench_timespec")

local function now_us()
    ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
    return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end
local threads = {}
local counter = 0
local QUANTILES = 1000

-- setup runs once per thread in the main Lua state: number the threads, keep them for done().
function M.setup(thread)
    counter = counter + 1
    thread:set("thread_no", counter)
    threads[#threads + 1] = thread
end

-- init runs in each thread's own Lua state: a seed per (run, thread).
function M.init()
    math.randomseed(seed + (thread_no or 0) * 1000003)
    bad = 0       -- responses outside 2xx (wrk itself counts only >= 400)
    replayed = 0  -- 2xx responses that were idempotent replays (fresh keys must never replay)
    latencies = {}
    sent_at = nil
end

-- Called by each script's request() just before it returns the request.
function M.sending()
    if raw then
        sent_at = now_us()
    end
end

-- A random UUID version 4 (RFC 9562), from 16-bit pieces (LuaJIT formats them exactly).
function M.uuid4()
    local r = math.random
    return string.format("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x",
        r(0, 0xffff), r(0, 0xffff), r(0, 0xffff), r(0, 0x0fff),
        0x8000 + r(0, 0x3fff), r(0, 0xffff), r(0, 0xffff), r(0, 0xffff))
end

-- A uniformly random user index in 1..n.
function M.pick(n)
    return math.random(1, n)
end

function M.response(status, headers)
    if sent_at then
        latencies[#latencies + 1] = now_us() - sent_at
        sent_at = nil
    end
    if status < 200 or status > 299 then
        bad = bad + 1
    elseif headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
        replayed = replayed + 1
    end
end

-- One machine-readable line for bench.py: counts, rate and latency (microseconds).
function M.done(summary, latency)
    local bad_total, replayed_total = 0, 0
    local all = {}
    for _, thread in ipairs(threads) do
        bad_total = bad_total + (thread:get("bad") or 0)
        replayed_total = replayed_total + (thread:get("replayed") or 0)
        for _, value in ipairs(thread:get("latencies") or {}) do
            all[#all + 1] = value
        end
    end
    table.sort(all)
    local function rank(p)  -- nearest rank, as pgbench's log is read by bench.py
        if #all == 0 then
            return -1
        end
        return all[math.max(1, math.min(#all, math.floor(p / 100 * #all + 0.5)))]
    end
    io.write(string.format(
        'BENCH_RAW {"count": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
        #all, rank(50), rank(90), rank(99), #all > 0 and all[#all] or -1))
    -- Both distributions as QUANTILES values, each holding an equal share of the requests, so
    -- that bench.py can pool the percentiles of a run measured in several rounds.
    local wrk_q, raw_q = {}, {}
    for k = 1, QUANTILES do
        local p = (k - 0.5) / QUANTILES * 100
        wrk_q[k] = string.format("%d", latency:percentile(p))
        raw_q[k] = string.format("%d", rank(p))
    end
    io.write('BENCH_QUANTILES {"wrk": [' .. table.concat(wrk_q, ",") .. '], "raw": ['
        .. table.concat(raw_q, ",") .. ']}\n')
    local e = summary.errors
    io.write(string.format(
        'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
            .. '"max_us": %d, "mean_us": %.1f, "non_2xx": %d, "status_ge_400": %d, "replayed": %d, '
            .. '"connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.max, latency.mean, bad_total, e.status, replayed_total,
        e.connect, e.read, e.write, e.timeout))
end

return M
