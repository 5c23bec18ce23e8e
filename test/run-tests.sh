#!/usr/bin/env bash
# Run the test tiers (default: all four) and print tests passed per tier. The mutation tier
# runs the named mutants (test/mutation/named_mutants.py): each must fail the fast tests.
# pytest's exit 5 (no tests collected) counts as a failure: every tier must hold tests.
set -u
cd "$(dirname "$0")/.."
tiers=("${@:-unit functional mutation lab}")
tiers=(${tiers[@]})
declare -A dirs=([unit]=test/unit [functional]=test/functional [lab]=test/integration)
rc=0
summary=()
rm -f /tmp/kvmcluster-lab-timings.jsonl /tmp/kvmcluster-lab-network-test-mode.txt \
  /tmp/kvmcluster-module-times.txt /tmp/kvmcluster-lab-shown.txt
for tier in "${tiers[@]}"; do
  start=$(date +%s)
  echo "== tier: $tier"
  if [ "$tier" = mutation ]; then
    .venv/bin/python test/mutation/named_mutants.py 2>&1 | tee "/tmp/kvmcluster-tier-$tier.log"
    code=${PIPESTATUS[0]}
    line=$(grep -E '^named mutants:' "/tmp/kvmcluster-tier-$tier.log" | tail -1)
  else
    KVMCLUSTER_MODULE_TIMES=/tmp/kvmcluster-module-times.txt \
      PYTHONPATH=test .venv/bin/python -m pytest -p no:cacheprovider -q "${dirs[$tier]}" \
      2>&1 | tee "/tmp/kvmcluster-tier-$tier.log"
    code=${PIPESTATUS[0]}
    line=$(grep -E '^[=]* ?[0-9]+ (passed|failed|error)' "/tmp/kvmcluster-tier-$tier.log" \
      | tail -1)
    [ "$code" -eq 5 ] && line="no tests collected (pytest exit 5)"
  fi
  summary+=("$tier: ${line:-pytest exit $code} ($(( $(date +%s) - start ))s)")
  [ "$code" -ne 0 ] && rc=1
done
echo "== tiers"
printf '  %s\n' "${summary[@]}"
if [ -s /tmp/kvmcluster-module-times.txt ]; then
  echo "== time per test module (fixtures included)"
  sed 's/^/  /' /tmp/kvmcluster-module-times.txt
fi
if [ -s /tmp/kvmcluster-lab-shown.txt ]; then
  echo "== shown by the lab tests"
  cat /tmp/kvmcluster-lab-shown.txt
fi
if [ -s /tmp/kvmcluster-lab-timings.jsonl ]; then
  echo "== lab timings"
  sed 's/^/  /' /tmp/kvmcluster-lab-timings.jsonl
fi
if [ -s /tmp/kvmcluster-lab-network-test-mode.txt ]; then
  echo "== the bridge takeover as test=True showed it before the real run (lab)"
  sed 's/^/  /' /tmp/kvmcluster-lab-network-test-mode.txt
fi
exit $rc
