#!/usr/bin/env bats
# The policy as Kubewarden runs it, the way Kubewarden's own policies test theirs: the module
# annotated with `kwctl annotate -m policy-metadata.yml -u README.md` (`make annotate`, the
# release artifact), then `kwctl run annotated-policy.wasm --request-path ... | jq` on each
# golden fixture (tests/fixtures/<case>/: request.json, settings.json, expected.json; the
# root crate's tests/admission_fixtures.rs checks the same fixtures natively).
#
#   make bats                                     # annotates, then runs this file
#   bats e2e-tests/kubewarden/policy.bats         # after `make setup annotate`
#
# Env: KWCTL (default kwctl, which `make setup` installs), DASK_POLICY_WASM (the plain
# module; default the wasm32-wasip1 release build under $CARGO_TARGET_DIR),
# DASK_POLICY_ANNOTATED_WASM (default annotated-policy.wasm beside it), PYTHON (a Python 3
# with PyYAML, default python3; the Makefile passes the venv's).
#
# Every case runs or fails: without kwctl, the module or the annotated module each test
# fails saying what to run (and `make bats` fails if bats reports any case as not run).

setup() {
  KWCTL=${KWCTL:-kwctl}
  PYTHON=${PYTHON:-python3}
  REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
  FIXTURES="$REPO/tests/fixtures"
  TARGET=${CARGO_TARGET_DIR:-$REPO/target}
  MODULE=${DASK_POLICY_WASM:-$TARGET/wasm32-wasip1/release/dask_worker_defaults.wasm}
  ANNOTATED=${DASK_POLICY_ANNOTATED_WASM:-$(dirname "$MODULE")/annotated-policy.wasm}
  command -v "$KWCTL" >/dev/null 2>&1 ||
    fail "kwctl ($KWCTL) is not installed: run 'make setup' (it installs Kubewarden's kwctl)"
  [ -f "$MODULE" ] || fail "no policy module at $MODULE: run 'make wasm'"
  [ -f "$ANNOTATED" ] || fail "no annotated module at $ANNOTATED: run 'make annotate'"
}

fail() {
  echo "$*" >&2
  return 1
}

# check_fixture CASE [MODULE]: runs CASE through `$KWCTL run` and compares the response
# with its expected.json. MODULE defaults to the annotated release artifact.
check_fixture() {
  local dir="$FIXTURES/$1" expected="$FIXTURES/$1/expected.json" module=${2:-$ANNOTATED}
  [ -f "$expected" ] || fail "no fixture $1 in $FIXTURES"
  local settings=()
  [ -f "$dir/settings.json" ] && settings=(--settings-path "$dir/settings.json")
  local stdout stderr status=0
  stderr=$(mktemp)
  stdout=$("$KWCTL" run --request-path "$dir/request.json" "${settings[@]}" "$module" \
    2>"$stderr") || status=$?

  if jq -e 'has("exitCode")' "$expected" >/dev/null; then
    [ "$status" -eq "$(jq .exitCode "$expected")" ] || fail "exit $status: $(cat "$stderr")"
    grep -qxF "$(jq -r .stderr "$expected")" "$stderr" || fail "stderr: $(cat "$stderr")"
    [ -z "$stdout" ] || fail "a response on invalid settings: $stdout"
    return 0
  fi
  [ "$status" -eq 0 ] || fail "exit $status: $(cat "$stderr")"
  local response
  response=$(printf '%s\n' "$stdout" | tail -n 1)
  [ "$(jq -c .uid <<<"$response")" = "$(jq -c '.request.uid // .uid' "$dir/request.json")" ]
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
@test "float bytes counted as Dask's parse_bytes counts them" { check_fixture float-bytes-like-dask; }
@test "--nprocs with --nworkers refused" { check_fixture nprocs-with-nworkers-refused; }
@test "--nprocs warns and is read as --nworkers" { check_fixture nprocs-warns; }
@test "--nthreads 0 is Dask's default: derived from the limits" { check_fixture nthreads-zero-is-the-default; }
@test "memoryHeadroom setting" { check_fixture memory-headroom-setting; }
@test "applyDefaultAffinity none: no node affinity added" { check_fixture affinity-none; }
@test "applyDefaultAffinity required: the Dask pool is required" { check_fixture affinity-required; }
@test "applyDefaultAffinity required joins the user's own required term" { check_fixture affinity-required-joins-user-term; }
@test "the user's own affinity terms are kept beside the preferred pool" { check_fixture affinity-user-terms-kept; }

@test "every fixture folder is checked by this file" {
  local folders listed
  folders=$(find "$FIXTURES" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
  listed=$(grep -o 'check_fixture [a-z0-9-]*; }$' "$BATS_TEST_FILENAME" |
    sed 's/check_fixture \(.*\); }/\1/' | sort)
  [ "$folders" = "$listed" ] || fail "fixture folders vs cases here: $(diff <(echo "$folders") <(echo "$listed"))"
}

@test "annotate with kwctl (metadata and README), then run the result" {
  "$KWCTL" annotate -m "$REPO/policy-metadata.yml" -u "$REPO/README.md" \
    -o "$BATS_TEST_TMPDIR/annotated-policy.wasm" "$MODULE"
  check_fixture readme-worker-spec "$BATS_TEST_TMPDIR/annotated-policy.wasm"
  check_fixture invalid-settings "$BATS_TEST_TMPDIR/annotated-policy.wasm"
}

@test "the annotated module carries policy-metadata.yml and the README, as kwctl inspect shows" {
  "$KWCTL" inspect -o yaml "$ANNOTATED" >"$BATS_TEST_TMPDIR/inspect.yml"
  "$PYTHON" - "$BATS_TEST_TMPDIR/inspect.yml" "$REPO/policy-metadata.yml" "$REPO/README.md" <<'EOF'
import sys
import yaml

inspected = yaml.safe_load(open(sys.argv[1]))
declared = yaml.safe_load(open(sys.argv[2]))
readme = open(sys.argv[3]).read()
problems = []
for key, value in declared.items():
    if key == "annotations":
        continue
    if inspected.get(key) != value:
        problems.append(f"{key}: module has {inspected.get(key)!r}, policy-metadata.yml {value!r}")
annotations = inspected.get("annotations", {})
for key, value in declared["annotations"].items():
    if annotations.get(key) != value:
        problems.append(f"annotation {key}: module has {annotations.get(key)!r}, policy-metadata.yml {value!r}")
if annotations.get("io.kubewarden.policy.usage") != readme:
    problems.append("io.kubewarden.policy.usage is not README.md (annotate with -u README.md)")
if inspected.get("protocolVersion") != "v1":
    problems.append(f"protocolVersion {inspected.get('protocolVersion')!r}, expected v1")
if problems:
    sys.exit("\n".join(problems))
EOF
}

@test "a plain module runs too, allowed to mutate" { check_fixture readme-worker-spec "$MODULE"; }

# kwctl takes the runtime from the module's metadata (executionMode: kubewarden-wapc);
# `--execution-mode opa` overrides it, and the OPA runtime cannot run a waPC module.
# (kwctl 1.36.0-beta.1 offers no working value for waPC on the command line: its flag
# accepts `kubewarden`, which it then refuses as an unknown mode, and refuses
# `kubewarden-wapc`, the name its error message gives.)
@test "the execution mode comes from the metadata; --execution-mode opa overrides it" {
  local response
  response=$("$KWCTL" run --request-path "$FIXTURES/readme-worker-spec/request.json" \
    "$ANNOTATED" 2>/dev/null | tail -n 1)
  [ "$(jq -c .allowed <<<"$response")" = true ]
  [ "$(jq -r .patchType <<<"$response")" = JSONPatch ]
  run "$KWCTL" run --execution-mode opa \
    --request-path "$FIXTURES/readme-worker-spec/request.json" "$ANNOTATED"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Rego"* ]]
}

teardown() {
  if [ -n "${POLICY_SERVER_PID:-}" ]; then
    kill "$POLICY_SERVER_PID" 2>/dev/null || true
    wait "$POLICY_SERVER_PID" 2>/dev/null || true
  fi
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The README's ClusterAdmissionPolicy through cap-translate (what Kubewarden's controller
# would write), then Kubewarden's policy-server on loopback with that policies.yml and TLS:
# the README pod, sent where the webhook configuration points with the CA it carries, gets
# the fixture's patch.
@test "the README's ClusterAdmissionPolicy, translated as the controller would, is served by policy-server" {
  command -v policy-server >/dev/null 2>&1 || fail "policy-server is not installed: run 'make setup'"
  local dir="$BATS_TEST_TMPDIR" port readiness module url
  port=$(free_port)
  readiness=$(free_port)
  module=$(realpath "$ANNOTATED")
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
  "$PYTHON" "$BATS_TEST_DIRNAME/cap-translate" --readme "$REPO/README.md" --module "$module" \
    --url "https://127.0.0.1:$port" --ca-bundle "$dir/tls.crt" \
    --policies-out "$dir/policies.yml" --webhook-out "$dir/webhook.json"
  policy-server --policies "$dir/policies.yml" --addr 127.0.0.1 --port "$port" \
    --readiness-probe-port "$readiness" --cert-file "$dir/tls.crt" --key-file "$dir/tls.key" \
    --ignore-kubernetes-connection-failure --policies-download-dir "$dir" \
    --sigstore-cache-dir "$dir/sigstore" --log-no-color >"$dir/policy-server.log" 2>&1 3>&- &
  POLICY_SERVER_PID=$!
  local i
  for i in $(seq 120); do
    curl -fsS "http://127.0.0.1:$readiness/readiness" >/dev/null 2>&1 && break
    kill -0 "$POLICY_SERVER_PID" 2>/dev/null || fail "policy-server exited: $(tail -n 20 "$dir/policy-server.log")"
    sleep 0.5
  done
  curl -fsS "http://127.0.0.1:$readiness/readiness" >/dev/null ||
    fail "policy-server not ready after 60 s: $(tail -n 20 "$dir/policy-server.log")"

  url=$(jq -r '.webhooks[0].clientConfig.url' "$dir/webhook.json")
  jq -r '.webhooks[0].clientConfig.caBundle | @base64d' "$dir/webhook.json" >"$dir/ca-bundle.crt"
  jq '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview", request: .request}' \
    "$FIXTURES/readme-worker-spec/request.json" >"$dir/review.json"
  local review expected="$FIXTURES/readme-worker-spec/expected.json"
  review=$(curl -fsS --cacert "$dir/ca-bundle.crt" -H 'Content-Type: application/json' \
    --data "@$dir/review.json" "$url") || fail "POST $url failed: $(tail -n 20 "$dir/policy-server.log")"
  [ "$url" = "https://127.0.0.1:$port/validate/clusterwide-dask-worker-defaults" ]
  [ "$(jq -c .response.allowed <<<"$review")" = "$(jq -c .allowed "$expected")" ]
  [ "$(jq -c '.response.patch | @base64d | fromjson' <<<"$review")" = "$(jq -c .patch "$expected")" ]
}
