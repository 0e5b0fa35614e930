-- Argo CD health check for regrow.dev's TrainingJob, ModelDeployment and DriftPolicy (Lua 5.1).
-- Progressing until regrow has observed the current generation and written its condition; then the
-- condition decides: True is Healthy, False is Degraded, Unknown is Progressing, with its message.
local hs = {}
local wanted = "Ready"
if obj.kind == "TrainingJob" then
  wanted = "Succeeded"
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for regrow to observe the " .. obj.kind
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for regrow to observe generation " .. generation
  return hs
end

local condition = nil
for _, c in ipairs(status.conditions or {}) do
  if c.type == wanted then
    condition = c
  end
end
if condition == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the " .. wanted .. " condition"
  return hs
end

local message = condition.reason or ""
if condition.message ~= nil and condition.message ~= "" then
  message = message .. ": " .. condition.message
end
if condition.status == "True" then
  hs.status = "Healthy"
elseif condition.status == "False" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
