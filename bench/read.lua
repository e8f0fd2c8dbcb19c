-- GET /users/{id}/balance (BENCH_READ=balance) or /users/{id}/history?limit=20
-- (BENCH_READ=history) for a user chosen uniformly at random; GET /healthz (BENCH_READ=healthz),
-- which reaches no database: the server's floor.
local bench = dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local users = bench.users
local n = #users
local what = os.getenv("BENCH_READ")
local suffix = what == "history" and "/history?limit=20" or "/balance"

setup = bench.setup
response = bench.response
done = bench.done

function init()
    bench.init()
end

function request()
    bench.sending()
    local path = what == "healthz" and "/healthz" or "/users/" .. users[math.random(1, n)] .. suffix
    return wrk.format("GET", path, {
        ["X-API-Key"] = bench.api_key,
    })
end
