-- Argo CD health check for regrow.dev's TrainingJob, ModelDeployment and DriftPolicy (Lua 5.1).
-- Progressing until regrow has observed the current generation and written its condition; then the
-- condition decides: True is Healthy, False is Degraded, Unknown is Progressing, with its message.
-- A ModelDeployment's canary, unless it is Degraded already: Progressing while it steps up or promotes,
-- Suspended while it waits for `regrow promote`, Degraded after a rollback until a newer version serves.
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

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if condition.status == "True" then
  hs.status = "Healthy"
elseif condition.status == "False" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = describe(condition)

local canary = {CanaryStep = "Progressing", ShadowStep = "Progressing", Promoting = "Progressing",
                WaitingForApproval = "Suspended", RolledBack = "Degraded"}
if obj.kind == "ModelDeployment" and hs.status ~= "Degraded" then
  for _, c in ipairs(status.conditions) do
    if c.type == "Progressing" and canary[c.reason] ~= nil then
      hs.status = canary[c.reason]
      hs.message = describe(c)
    end
  end
end
return hs
