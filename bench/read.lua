-- GET /users/{id}/balance (BENCH_READ=balance) or /users/{id}/history?limit=20
-- (BENCH_READ=history) for a user chosen uniformly at random.
local bench = dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local users = bench.users
local n = #users
local suffix = os.getenv("BENCH_READ") == "history" and "/history?limit=20" or "/balance"

setup = bench.setup
response = bench.response
done = bench.done

function init()
    bench.init()
end

function request()
    bench.sending()
    return wrk.format("GET", "/users/" .. users[math.random(1, n)] .. suffix, {
        ["X-API-Key"] = bench.api_key,
    })
end
