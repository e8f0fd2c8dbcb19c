-- POST /transfers with a fresh Idempotency-Key per request, 1.00000000 ATP between two
-- different users chosen uniformly at random; BENCH_HOT=1: every transfer goes to user 1
-- (one merchant) from a random payer.
local bench = dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local users = bench.users
local n = #users
local hot = os.getenv("BENCH_HOT") == "1"

setup = bench.setup
response = bench.response
done = bench.done

function init()
    bench.init()
end

function request()
    local from, to
    if hot then
        from = math.random(2, n)
        to = 1
    else
        from = math.random(1, n)
        to = 1 + (from + math.random(0, n - 2)) % n  -- never equal to from
    end
    local body = '{"from_user_id":"' .. users[from] .. '","to_user_id":"' .. users[to]
        .. '","amount":"1.00000000","memo":"bench"}'
    bench.sending()
    return wrk.format("POST", "/transfers", {
        ["Content-Type"] = "application/json",
        ["X-API-Key"] = bench.api_key,
        ["X-Request-User-Id"] = users[from],
        ["Idempotency-Key"] = bench.uuid4(),
    }, body)
end
