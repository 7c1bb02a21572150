-- POST /v1/batch with `size` rate-limit checks each, on keys drawn uniformly from `keys`.
-- Bodies are built once per thread (a pool of 50 per
-- thread: 64 x 50 x 100 key draws), so the client spends its time sending.
-- wrk ... -s batch.lua URL -- NAMESPACE KEYS SIZE
dofile("report.lua")
counters = {"ok", "denied", "failed", "bad_items"}

local headers = {["Content-Type"] = "application/json"}
local args_json = '{"limit":1000,"period_ms":60000,"algorithm":"fixed_window"}'
local pool, size, next_body = {}, 100, 1

function init(args)
   local namespace = args[1] or "bench-batch"
   local keys = tonumber(args[2] or "10000")
   size = tonumber(args[3] or "100")
   math.randomseed(2000 + id)
   for b = 1, 50 do
      local ops = {}
      for i = 1, size do
         ops[i] = '{"op":"ratelimits.check","namespace":"' .. namespace .. '","name":"key-' ..
            math.random(0, keys - 1) .. '","args":' .. args_json .. '}'
      end
      pool[b] = wrk.format("POST", "/v1/batch", headers, '{"ops":[' .. table.concat(ops, ",") .. ']}')
   end
   ok, denied, failed, bad_items = 0, 0, 0, 0
end

function request()
   local req = pool[next_body]
   next_body = next_body % #pool + 1
   return req
end

function response(status, _, answer)
   if status ~= 200 then
      failed = failed + 1
      return
   end
   local _, allowed = answer:gsub('"allowed":true', '')
   local _, refused = answer:gsub('"allowed":false', '')
   ok = ok + allowed
   denied = denied + refused
   bad_items = bad_items + (size - allowed - refused)
end
