-- POST /v1/events: one event per request, a new event id each time, users rotating.
dofile("bench/wrk_report.lua")
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = os.getenv("BENCH_AUTH") or "" }
local sent = 0

request = function()
  sent = sent + 1
  local body = string.format(
    '{"event_id":"bench-%d-%d-%d","user_id":"bench-u%d","name":"bench_api_event",'
      .. '"ts":1764291600000,"properties":{"n":%d,"plan":"pro"},"device":{"platform":"ios"}}',
    seed or 0, os.time(), sent, math.random(0, users - 1), sent)
  return wrk.format("POST", "/v1/events", headers, body)
end
