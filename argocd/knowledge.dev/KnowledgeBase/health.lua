-- Argo CD health of a knowledge.dev/KnowledgeBase, from the status the operator writes.
-- Suspended while spec.paused; Progressing until the operator has observed the current
-- generation and while Ready is not True; Degraded when the Degraded condition is True
-- (invalid spec, missing Secret, a child that cannot be applied or adopted); Progressing
-- while a change of the embedding model re-indexes (Progressing reason ModelRollout), even
-- where enough replicas serve for Ready; Healthy when Ready is True (every replica ready on
-- the current revision, Redis ready).
local hs = {}
if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "spec.paused is true: the operator leaves the children alone"
  return hs
end
local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil or
    (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the current spec"
  return hs
end
local conditions = {}
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    conditions[condition.type] = condition
  end
end
local degraded = conditions["Degraded"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.reason .. ": " .. degraded.message
  return hs
end
local progressing = conditions["Progressing"]
if progressing ~= nil and progressing.status == "True" and progressing.reason == "ModelRollout" then
  hs.status = "Progressing"
  hs.message = progressing.reason .. ": " .. progressing.message
  return hs
end
local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = ready.reason .. ": " .. ready.message
else
  hs.message = "Waiting for the Ready condition"
end
return hs
