-- The ceiling: a trivial FastAPI endpoint, requests built per call like the other scripts.
dofile("bench/wrk_report.lua")

request = function()
  return wrk.format("GET", "/bare")
end
