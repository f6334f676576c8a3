#!/usr/bin/env bats
# The policy's e2e fixtures through `kwctl run`, as upstream Kubewarden policies test
# (`kwctl run ... | jq`). Same fixtures and expectations as policy_fixtures.rs, which runs
# them through policy-runner on every machine. Skipped only when kwctl is absent.
#
#   bats e2e-tests/policy-runner/tests/policy.bats                  # real kwctl
#   KWCTL=policy-runner bats e2e-tests/policy-runner/tests/policy.bats  # our stand-in
#
# DASK_POLICY_WASM overrides the module path (default: the release wasm32-wasip1 build).

setup() {
  KWCTL=${KWCTL:-kwctl}
  if ! command -v "$KWCTL" >/dev/null 2>&1; then
    skip "$KWCTL is not installed; policy_fixtures.rs runs these cases through policy-runner"
  fi
  REPO=$(cd "$BATS_TEST_DIRNAME/../../.." && pwd)
  FIXTURES="$BATS_TEST_DIRNAME/fixtures/policy"
  TARGET=${CARGO_TARGET_DIR:-$REPO/target}
  MODULE=${DASK_POLICY_WASM:-$TARGET/wasm32-wasip1/release/dask_worker_defaults.wasm}
  [ -f "$MODULE" ] || skip "no module at $MODULE: run 'make wasm' first"
}

# check_fixture CASE: evaluates CASE and compares with its expected.json.
check_fixture() {
  local dir="$FIXTURES/$1" expected="$FIXTURES/$1/expected.json" settings=()
  [ -f "$dir/settings.json" ] && settings=(--settings-path "$dir/settings.json")
  local stdout stderr status=0
  stderr=$(mktemp)
  stdout=$("$KWCTL" run -m "$REPO/policy-metadata.yml" --request-path "$dir/request.json" \
    "${settings[@]}" "file://$MODULE" 2>"$stderr") || status=$?

  if jq -e 'has("exitCode")' "$expected" >/dev/null; then
    [ "$status" -eq "$(jq .exitCode "$expected")" ]
    grep -q "Provided settings are not valid" "$stderr"
    return 0
  fi
  [ "$status" -eq 0 ] || { cat "$stderr"; return 1; }
  local response
  response=$(printf '%s\n' "$stdout" | tail -n 1)
  [ "$(jq -c .allowed <<<"$response")" = "$(jq -c .allowed "$expected")" ]
  [ "$(jq -c 'if .patch then (.patch | @base64d | fromjson) else null end' <<<"$response")" \
    = "$(jq -c .patch "$expected")" ]
  [ "$(jq -c '.status.message // null' <<<"$response")" = "$(jq -c .message "$expected")" ]
  [ "$(jq -c '.warnings // null' <<<"$response")" = "$(jq -c .warnings "$expected")" ]
}

@test "README worker-spec pod gets tolerations, name and env" { check_fixture readme-worker-spec; }
@test "already defaulted pod: no patch" { check_fixture already-defaulted; }
@test "unlabelled pod (bare AdmissionRequest): no patch" { check_fixture unlabelled-pod; }
@test "sidecar container untouched" { check_fixture sidecar; }
@test "dask-worker with classic labels" { check_fixture dask-worker-hyphenated; }
@test "sh -c script edited in place" { check_fixture sh-c; }
@test "--nworkers multiplies resources" { check_fixture nworkers; }
@test "flags derived from GiB limits" { check_fixture flags-from-gib-limits; }
@test "--memory-limit auto: warning, memory untouched" { check_fixture memory-limit-auto; }
@test "mismatch rejected by default" { check_fixture mismatch-reject; }
@test "mismatch with onMismatch useResources" { check_fixture mismatch-use-resources; }
@test "mismatch with onMismatch useFlags" { check_fixture mismatch-use-flags; }
@test "Deployment template on UPDATE" { check_fixture deployment; }
@test "Job template" { check_fixture job; }
@test "CronJob template" { check_fixture cronjob; }
@test "DaskWorkerGroup worker spec" { check_fixture daskworkergroup; }
@test "DELETE with null object" { check_fixture delete; }
@test "Pod UPDATE untouched" { check_fixture pod-update; }
@test "malformed object refused" { check_fixture malformed-object; }
@test "fractional-byte memory quantity refused" { check_fixture fractional-byte-quantity; }
@test "invalid settings: exit 1 with kwctl's message" { check_fixture invalid-settings; }
