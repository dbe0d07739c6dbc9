-- GET /v1/users/{id}/inbox for a random seeded user (bench-u0 .. bench-u<BENCH_USERS - 1>).
dofile("bench/wrk_report.lua")
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local headers = { ["Authorization"] = os.getenv("BENCH_AUTH") or "" }

request = function()
  return wrk.format("GET", "/v1/users/bench-u" .. math.random(0, users - 1) .. "/inbox", headers)
end
