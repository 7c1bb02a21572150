-- wrk script for bench_gateway: each request names one of KEYS keys in X-Key, drawn
-- Zipf-like (rank r with probability proportional to 1 / r^EXPONENT), like real traffic
-- where a few clients make most of the requests. Each wrk thread seeds its own generator.
local KEYS = tonumber(os.getenv("BENCH_KEYS") or "10000")
local EXPONENT = tonumber(os.getenv("BENCH_ZIPF_EXPONENT") or "1.0")
local PATH = os.getenv("BENCH_PATH") or "/check/bench"

local cdf = {}
local total = 0
for rank = 1, KEYS do
  total = total + 1 / rank ^ EXPONENT
  cdf[rank] = total
end
for rank = 1, KEYS do
  cdf[rank] = cdf[rank] / total
end

local function draw()
  local u = math.random()
  local low, high = 1, KEYS
  while low < high do
    local mid = math.floor((low + high) / 2)
    if cdf[mid] < u then low = mid + 1 else high = mid end
  end
  return low
end

local thread_number = 0
function setup(thread)
  thread_number = thread_number + 1
  thread:set("seed", thread_number)
end

function init(args)
  math.randomseed(seed or 1)
end

function request()
  return wrk.format("GET", PATH, { ["X-Key"] = "key-" .. draw() })
end
