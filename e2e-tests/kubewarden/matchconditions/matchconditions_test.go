// Package matchconditions checks the README's ClusterAdmissionPolicy matchConditions with
// the apiserver's own code (k8s.io/apiserver v0.37.2, the version the local cluster runs):
// compiled as a MutatingWebhookConfiguration's conditions are, evaluated on admission
// attributes as the webhook dispatcher evaluates them before calling a webhook.
//
// What it guards: every golden fixture the policy changes or refuses reaches the policy
// (otherwise its defaults would silently not be applied), objects the policy ignores do
// not (so they never depend on the policy being up), and no object makes the expression
// fail (with failurePolicy Fail an evaluation error refuses the request).
package matchconditions

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"
	"sigs.k8s.io/yaml"
)

const repo = "../../.."

// readmeCAP is the README's ClusterAdmissionPolicy, the part this test reads.
type readmeCAP struct {
	Kind string `json:"kind"`
	Spec struct {
		Rules           []admissionregistrationv1.RuleWithOperations `json:"rules"`
		FailurePolicy   *admissionregistrationv1.FailurePolicyType   `json:"failurePolicy"`
		MatchConditions []admissionregistrationv1.MatchCondition     `json:"matchConditions"`
	} `json:"spec"`
}

func loadCAP(t *testing.T) readmeCAP {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var found []readmeCAP
	for _, m := range regexp.MustCompile("(?ms)^```ya?ml\n(.*?)^```").FindAllStringSubmatch(string(readme), -1) {
		if !regexp.MustCompile("(?m)^kind: ClusterAdmissionPolicy$").MatchString(m[1]) {
			continue
		}
		var cap readmeCAP
		if err := yaml.Unmarshal([]byte(m[1]), &cap); err != nil {
			t.Fatalf("README's ClusterAdmissionPolicy: %v", err)
		}
		found = append(found, cap)
	}
	if len(found) != 1 || len(found[0].Spec.MatchConditions) == 0 {
		t.Fatalf("want one ClusterAdmissionPolicy with matchConditions in the README, found %d", len(found))
	}
	return found[0]
}

// matcher compiles the conditions as the apiserver does for a webhook (its dispatcher's
// compiler and options, webhook/generic and webhook/accessors.go).
func matcher(t *testing.T, cap readmeCAP, mode environment.Type) matchconditions.Matcher {
	t.Helper()
	compiler := cel.NewConditionCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	expressions := make([]cel.ExpressionAccessor, len(cap.Spec.MatchConditions))
	for i, c := range cap.Spec.MatchConditions {
		expressions[i] = &matchconditions.MatchCondition{Name: c.Name, Expression: c.Expression}
	}
	return matchconditions.NewMatcher(compiler.CompileCondition(expressions,
		cel.OptionalVariableDeclarations{HasParams: false, HasAuthorizer: true}, mode),
		cap.Spec.FailurePolicy, "webhook", "admit", "clusterwide-dask-worker-defaults")
}

// request is the part of an AdmissionRequest the attributes are made from.
type request struct {
	Kind      schema.GroupVersionKind     `json:"kind"`
	Resource  schema.GroupVersionResource `json:"resource"`
	Namespace string                      `json:"namespace"`
	Name      string                      `json:"name"`
	Operation string                      `json:"operation"`
	Object    map[string]any              `json:"object"`
	OldObject map[string]any              `json:"oldObject"`
}

func attributes(r request) *admission.VersionedAttributes {
	var object, old runtime.Object
	if r.Object != nil {
		object = &unstructured.Unstructured{Object: r.Object}
	}
	if r.OldObject != nil {
		old = &unstructured.Unstructured{Object: r.OldObject}
	}
	attrs := admission.NewAttributesRecord(object, old, r.Kind, r.Namespace, r.Name, r.Resource, "",
		admission.Operation(r.Operation), nil, false, &user.DefaultInfo{Name: "alice"})
	return &admission.VersionedAttributes{Attributes: attrs, VersionedKind: r.Kind,
		VersionedObject: admission.NewLazyObject(object), VersionedOldObject: admission.NewLazyObject(old)}
}

// inRules: would the webhook's rules send this request at all (exact group, version,
// resource and operation, as the README's rules are written).
func inRules(cap readmeCAP, r request) bool {
	has := func(list []string, v string) bool {
		for _, x := range list {
			if x == v || x == "*" {
				return true
			}
		}
		return false
	}
	for _, rule := range cap.Spec.Rules {
		ops := make([]string, len(rule.Operations))
		for i, op := range rule.Operations {
			ops[i] = string(op)
		}
		if has(rule.APIGroups, r.Resource.Group) && has(rule.APIVersions, r.Resource.Version) &&
			has(rule.Resources, r.Resource.Resource) && has(ops, r.Operation) {
			return true
		}
	}
	return false
}

func match(t *testing.T, m matchconditions.Matcher, r request) bool {
	t.Helper()
	result := m.Match(context.Background(), attributes(r), nil, nil)
	if result.Error != nil {
		t.Fatalf("%s %s/%s: the condition fails (a refusal under failurePolicy Fail): %v",
			r.Operation, r.Resource.Resource, r.Name, result.Error)
	}
	return result.Matches
}

func TestConditionsCompileAsTheApiserverValidatesThem(t *testing.T) {
	cap := loadCAP(t)
	// Creating a webhook configuration compiles its conditions with NewExpressions; an
	// error there is returned at evaluation, so evaluate once.
	m := matcher(t, cap, environment.NewExpressions)
	match(t, m, request{Kind: schema.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource: schema.GroupVersionResource{Version: "v1", Resource: "pods"}, Operation: "CREATE",
		Object: map[string]any{"metadata": map[string]any{"name": "p"}}})
}

// Every golden fixture the policy patches or refuses must reach it; the unlabelled pod
// must not.
func TestEveryFixtureThePolicyActsOnReachesIt(t *testing.T) {
	cap := loadCAP(t)
	m := matcher(t, cap, environment.StoredExpressions)
	dirs, err := filepath.Glob(filepath.Join(repo, "tests/fixtures/*/request.json"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	acted := 0
	for _, path := range dirs {
		name := filepath.Base(filepath.Dir(path))
		var doc struct {
			Request json.RawMessage `json:"request"`
		}
		var expected struct {
			Allowed *bool           `json:"allowed"`
			Patch   json.RawMessage `json:"patch"`
		}
		readJSON(t, path, &doc)
		readJSON(t, filepath.Join(filepath.Dir(path), "expected.json"), &expected)
		var r request
		if len(doc.Request) > 0 {
			unmarshal(t, name, doc.Request, &r) // an AdmissionReview
		} else {
			readJSON(t, path, &r) // a bare AdmissionRequest
		}
		if !inRules(cap, r) || expected.Allowed == nil {
			continue // not sent by the rules (DELETE, Pod UPDATE), or refused settings
		}
		acts := !*expected.Allowed || (len(expected.Patch) > 0 && string(expected.Patch) != "null")
		got := match(t, m, r)
		if acts && !got {
			t.Errorf("%s: the policy changes or refuses it, but the matchConditions skip it", name)
		}
		if name == "unlabelled-pod" && got {
			t.Errorf("%s: not a worker, but sent to the policy", name)
		}
		if acts {
			acted++
		}
	}
	if acted < 20 {
		t.Fatalf("only %d fixtures the policy acts on were checked", acted)
	}
}

func TestObjectsThePolicyIgnoresNeverReachIt(t *testing.T) {
	cap := loadCAP(t)
	m := matcher(t, cap, environment.StoredExpressions)
	deployment := func(template map[string]any) map[string]any {
		return map[string]any{"metadata": map[string]any{"name": "web",
			"labels": map[string]any{"dask.org/component": "worker"}}, // its own labels do not count
			"spec": map[string]any{"template": template}}
	}
	for name, r := range map[string]request{
		"pod without labels":             podCreate(nil),
		"pod without metadata":           {Kind: gvk("", "Pod"), Resource: gvr("", "pods"), Operation: "CREATE", Object: map[string]any{"spec": map[string]any{}}},
		"pod with only app=dask":         podCreate(map[string]any{"app": "dask"}),
		"pod with component=worker only": podCreate(map[string]any{"component": "worker"}),
		"deployment with an unlabelled template": {Kind: gvk("apps", "Deployment"), Resource: gvr("apps", "deployments"), Operation: "CREATE",
			Object: deployment(map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": "web"}}})},
		"deployment whose template has no metadata": {Kind: gvk("apps", "Deployment"), Resource: gvr("apps", "deployments"), Operation: "UPDATE",
			Object: deployment(map[string]any{"spec": map[string]any{}})},
		"deployment without a template": {Kind: gvk("apps", "Deployment"), Resource: gvr("apps", "deployments"), Operation: "CREATE",
			Object: map[string]any{"metadata": map[string]any{"name": "x"}, "spec": map[string]any{}}},
		"job without spec": {Kind: gvk("batch", "Job"), Resource: gvr("batch", "jobs"), Operation: "CREATE",
			Object: map[string]any{"metadata": map[string]any{"name": "j"}}},
		"cronjob without a job template": {Kind: gvk("batch", "CronJob"), Resource: gvr("batch", "cronjobs"), Operation: "CREATE",
			Object: map[string]any{"metadata": map[string]any{"name": "c"}, "spec": map[string]any{"schedule": "* * * * *"}}},
		"cronjob whose pods are not workers": {Kind: gvk("batch", "CronJob"), Resource: gvr("batch", "cronjobs"), Operation: "CREATE",
			Object: map[string]any{"spec": map[string]any{"jobTemplate": map[string]any{"spec": map[string]any{"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"dask.org/component": "scheduler"}}}}}}}},
	} {
		if match(t, m, r) {
			t.Errorf("%s: sent to the policy, which would leave it unchanged", name)
		}
	}
	for name, r := range map[string]request{
		"classic worker pod": podCreate(map[string]any{"app": "dask", "component": "dask-worker"}),
		"cronjob of workers": {Kind: gvk("batch", "CronJob"), Resource: gvr("batch", "cronjobs"), Operation: "UPDATE",
			Object: map[string]any{"spec": map[string]any{"jobTemplate": map[string]any{"spec": map[string]any{"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"dask.org/component": "worker"}}}}}}}},
		"DaskCluster": {Kind: gvk("kubernetes.dask.org", "DaskCluster"), Resource: gvr("kubernetes.dask.org", "daskclusters"), Operation: "CREATE",
			Object: map[string]any{"metadata": map[string]any{"name": "d"}, "spec": map[string]any{}}},
	} {
		if !match(t, m, r) {
			t.Errorf("%s: the policy defaults it, but it is not sent", name)
		}
	}
}

func gvk(group, kind string) schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: group, Version: "v1", Kind: kind}
}

func gvr(group, resource string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: group, Version: "v1", Resource: resource}
}

func podCreate(labels map[string]any) request {
	metadata := map[string]any{"name": "p"}
	if labels != nil {
		metadata["labels"] = labels
	}
	return request{Kind: gvk("", "Pod"), Resource: gvr("", "pods"), Operation: "CREATE",
		Object: map[string]any{"metadata": metadata, "spec": map[string]any{}}}
}

func readJSON(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unmarshal(t, path, data, into)
}

func unmarshal(t *testing.T, what string, data []byte, into any) {
	t.Helper()
	if err := json.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", what, strings.TrimSpace(err.Error()))
	}
}
