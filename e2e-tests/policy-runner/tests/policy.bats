#!/usr/bin/env bats
# The policy's e2e fixtures through kwctl, as upstream Kubewarden policies test them:
# `kwctl annotate` writes policy-metadata.yml into the module (`make annotate`, the release
# artifact), then `kwctl run annotated-policy.wasm --request-path ... | jq`. Same fixtures
# and expectations as policy_fixtures.rs. Only kwctl's own flags are used, so the file
# runs with a real kwctl and with policy-runner, its stand-in:
#
#   make annotate && bats e2e-tests/policy-runner/tests/policy.bats   # real kwctl
#   KWCTL=policy-runner bats e2e-tests/policy-runner/tests/policy.bats  # the stand-in
#
# Skipped when $KWCTL is not installed or the modules are not built. Overrides:
# DASK_POLICY_WASM (plain module, default the wasm32-wasip1 release build) and
# DASK_POLICY_ANNOTATED_WASM (default annotated-policy.wasm beside it).

setup() {
  KWCTL=${KWCTL:-kwctl}
  if ! command -v "$KWCTL" >/dev/null 2>&1; then
    skip "$KWCTL is not installed; policy_fixtures.rs runs these cases through policy-runner"
  fi
  REPO=$(cd "$BATS_TEST_DIRNAME/../../.." && pwd)
  FIXTURES="$BATS_TEST_DIRNAME/fixtures/policy"
  TARGET=${CARGO_TARGET_DIR:-$REPO/target}
  MODULE=${DASK_POLICY_WASM:-$TARGET/wasm32-wasip1/release/dask_worker_defaults.wasm}
  ANNOTATED=${DASK_POLICY_ANNOTATED_WASM:-$(dirname "$MODULE")/annotated-policy.wasm}
  [ -f "$MODULE" ] || skip "no module at $MODULE: run 'make wasm' first"
  [ -f "$ANNOTATED" ] || skip "no annotated module at $ANNOTATED: run 'make annotate' first"
}

# check_fixture CASE [MODULE]: runs CASE through `$KWCTL run` and compares the response
# with its expected.json. MODULE defaults to the annotated release artifact.
check_fixture() {
  local dir="$FIXTURES/$1" expected="$FIXTURES/$1/expected.json" module=${2:-$ANNOTATED}
  local settings=()
  [ -f "$dir/settings.json" ] && settings=(--settings-path "$dir/settings.json")
  local stdout stderr status=0
  stderr=$(mktemp)
  stdout=$("$KWCTL" run --request-path "$dir/request.json" "${settings[@]}" "$module" \
    2>"$stderr") || status=$?

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
@test "--memory-limit auto is Dask's default: derived from the limits less memoryHeadroom" { check_fixture memory-limit-auto; }
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
@test "\$(VAR) from the container's resourceFieldRef resolved and checked" { check_fixture variable-resource-field-ref; }
@test "\$(VAR) with a divisor that makes a unitless byte count refused" { check_fixture variable-divisor-mebibytes-refused; }
@test "\$(VAR) from a ConfigMap: warning, memory untouched" { check_fixture variable-from-configmap-warns; }
@test "sh -c \$VAR resolved from a literal env value" { check_fixture sh-c-shell-variable; }
@test "--memory-limit below the floor refused with the unit Dask read" { check_fixture memory-limit-bytes-too-small; }
@test "applyDefaultAffinity required: classic's required node-purpose term" { check_fixture affinity-required; }
@test "applyDefaultAffinity none: no affinity" { check_fixture affinity-none; }
@test "the user's affinity kept beside the pool preference" { check_fixture affinity-user-terms-kept; }
@test "applyDefaultAffinity required joins the user's required term" { check_fixture affinity-required-joins-user-term; }
@test "float bytes counted as Dask's parse_bytes counts them" { check_fixture float-bytes-like-dask; }
@test "--nprocs with --nworkers refused" { check_fixture nprocs-with-nworkers-refused; }
@test "--nprocs warns and is read as --nworkers" { check_fixture nprocs-warns; }
@test "--nthreads 0 is Dask's default: derived from the limits" { check_fixture nthreads-zero-is-the-default; }
@test "memoryHeadroom setting" { check_fixture memory-headroom-setting; }

@test "annotate with \$KWCTL, then run the result" {
  "$KWCTL" annotate -m "$REPO/policy-metadata.yml" -o "$BATS_TEST_TMPDIR/annotated-policy.wasm" \
    "$MODULE"
  check_fixture readme-worker-spec "$BATS_TEST_TMPDIR/annotated-policy.wasm"
  check_fixture invalid-settings "$BATS_TEST_TMPDIR/annotated-policy.wasm"
}

@test "a plain module runs too, allowed to mutate" { check_fixture readme-worker-spec "$MODULE"; }

@test "--execution-mode picks the runtime: kubewarden runs it, opa does not" {
  run "$KWCTL" run --execution-mode kubewarden \
    --request-path "$FIXTURES/readme-worker-spec/request.json" "$ANNOTATED"
  [ "$status" -eq 0 ]
  run "$KWCTL" run --execution-mode opa \
    --request-path "$FIXTURES/readme-worker-spec/request.json" "$ANNOTATED"
  [ "$status" -ne 0 ]
}
