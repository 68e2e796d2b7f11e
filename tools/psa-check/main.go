// Command psa-check evaluates the pods that Kubernetes manifests would create against a Pod
// Security Standards level with the Pod Security admission controller's own code
// (k8s.io/pod-security-admission/policy), the checks the API server runs when a namespace is
// labelled pod-security.kubernetes.io/enforce=LEVEL.
//
// It reads a stream of YAML documents or JSON objects on stdin (a `helm template` output, a
// JSON list) and finds every pod template in it: Pods, Deployments, StatefulSets, DaemonSets,
// ReplicaSets, Jobs, CronJobs, PodTemplates, and the KubeRay RayService, RayCluster and RayJob
// head, worker and submitter templates. For a Ray head with in-tree autoscaling it adds the
// autoscaler sidecar the KubeRay operator injects (its securityContext and volume mounts come
// from autoscalerOptions), since that container runs in the same pod and is admitted with it.
//
// It prints one JSON report on stdout: the pods checked and each violation (object, pod role,
// the forbidden reason and detail exactly as the admission controller words them). Exit
// status: 0 when every pod is allowed, 1 when a pod violates the level, 2 on bad input.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// Pod is one pod template found in the input.
type Pod struct {
	Object string // Kind/name of the object holding the template
	Role   string // template, head, worker group name, submitter, ...
	Meta   metav1.ObjectMeta
	Spec   corev1.PodSpec
}

// Violation is one pod a level forbids, worded as the admission controller words it.
type Violation struct {
	Object  string `json:"object"`
	Role    string `json:"role"`
	Reason  string `json:"reason"`
	Detail  string `json:"detail,omitempty"`
	Message string `json:"message"`
}

// Report is what psa-check prints.
type Report struct {
	Level      string      `json:"level"`
	Version    string      `json:"version"`
	Objects    int         `json:"objects"`
	Checked    []string    `json:"checked"`
	Violations []Violation `json:"violations"`
}

type template struct {
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     corev1.PodSpec    `json:"spec"`
}

func main() {
	level := flag.String("level", "restricted", "Pod Security Standards level: privileged, baseline or restricted")
	version := flag.String("version", "latest", `policy version: "latest" or "v1.N"`)
	flag.Parse()
	report, err := run(os.Stdin, *level, *version)
	if err != nil {
		fmt.Fprintln(os.Stderr, "psa-check:", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(report); err != nil {
		fmt.Fprintln(os.Stderr, "psa-check:", err)
		os.Exit(2)
	}
	if len(report.Violations) > 0 {
		os.Exit(1)
	}
}

func run(in io.Reader, levelText, versionText string) (*Report, error) {
	level, err := api.ParseLevel(levelText)
	if err != nil {
		return nil, fmt.Errorf("-level %q: %w", levelText, err)
	}
	version, err := api.ParseVersion(versionText)
	if err != nil {
		return nil, fmt.Errorf("-version %q: %w", versionText, err)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		return nil, err
	}
	objects, err := decodeAll(in)
	if err != nil {
		return nil, err
	}
	report := &Report{Level: string(level), Version: version.String(), Objects: len(objects), Checked: []string{}, Violations: []Violation{}}
	for index, object := range objects {
		pods, err := podsOf(object)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", index+1, err)
		}
		for _, pod := range pods {
			label := pod.Object + "/" + pod.Role
			report.Checked = append(report.Checked, label)
			results := evaluator.EvaluatePod(api.LevelVersion{Level: level, Version: version}, &pod.Meta, &pod.Spec)
			for _, result := range results {
				if result.Allowed {
					continue
				}
				message := result.ForbiddenReason
				if result.ForbiddenDetail != "" {
					message += " (" + result.ForbiddenDetail + ")"
				}
				report.Violations = append(report.Violations, Violation{
					Object: pod.Object, Role: pod.Role, Reason: result.ForbiddenReason,
					Detail: result.ForbiddenDetail, Message: message,
				})
			}
		}
	}
	return report, nil
}

// decodeAll reads every document of a YAML stream or JSON input; a JSON array or a List
// contributes its items.
func decodeAll(in io.Reader) ([]map[string]any, error) {
	decoder := utilyaml.NewYAMLOrJSONDecoder(in, 4096)
	var objects []map[string]any
	for {
		var doc any
		if err := decoder.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return objects, nil
			}
			return nil, fmt.Errorf("reading manifests: %w", err)
		}
		objects = append(objects, flatten(doc)...)
	}
}

func flatten(doc any) []map[string]any {
	switch value := doc.(type) {
	case []any:
		var out []map[string]any
		for _, item := range value {
			out = append(out, flatten(item)...)
		}
		return out
	case map[string]any:
		if items, ok := value["items"].([]any); ok && strings.HasSuffix(str(value["kind"]), "List") {
			return flatten(items)
		}
		return []map[string]any{value}
	}
	return nil // an empty document
}

// podsOf returns the pod templates of one object; kinds that create no pods have none.
func podsOf(object map[string]any) ([]Pod, error) {
	kind := str(object["kind"])
	name := str(dig(object, "metadata", "name"))
	id := kind + "/" + name
	one := func(role string, raw any) ([]Pod, error) {
		pod, err := toPod(id, role, raw)
		if err != nil {
			return nil, err
		}
		return []Pod{pod}, nil
	}
	switch kind {
	case "Pod":
		return one("pod", object)
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController":
		return one("template", dig(object, "spec", "template"))
	case "CronJob":
		return one("template", dig(object, "spec", "jobTemplate", "spec", "template"))
	case "PodTemplate":
		return one("template", object["template"])
	case "RayCluster":
		return rayCluster(id, asMap(object["spec"]))
	case "RayService":
		return rayCluster(id, asMap(dig(object, "spec", "rayClusterConfig")))
	case "RayJob":
		pods, err := rayCluster(id, asMap(dig(object, "spec", "rayClusterSpec")))
		if err != nil {
			return nil, err
		}
		if submitter := dig(object, "spec", "submitterPodTemplate"); submitter != nil {
			extra, err := one("submitter", submitter)
			if err != nil {
				return nil, err
			}
			pods = append(pods, extra...)
		}
		return pods, nil
	}
	return nil, nil
}

// rayCluster returns a Ray cluster spec's head and worker pods, the head with the autoscaler
// sidecar KubeRay adds when in-tree autoscaling is on.
func rayCluster(id string, cluster map[string]any) ([]Pod, error) {
	if cluster == nil {
		return nil, nil
	}
	head, err := toPod(id, "head", dig(cluster, "headGroupSpec", "template"))
	if err != nil {
		return nil, err
	}
	if enabled, _ := cluster["enableInTreeAutoscaling"].(bool); enabled {
		sidecar, err := autoscalerSidecar(asMap(cluster["autoscalerOptions"]), head.Spec)
		if err != nil {
			return nil, fmt.Errorf("%s autoscalerOptions: %w", id, err)
		}
		head.Spec.Containers = append(head.Spec.Containers, sidecar)
	}
	pods := []Pod{head}
	groups, _ := cluster["workerGroupSpecs"].([]any)
	for index, group := range groups {
		role := str(dig(group, "groupName"))
		if role == "" {
			role = fmt.Sprintf("worker-%d", index)
		}
		worker, err := toPod(id, role, dig(group, "template"))
		if err != nil {
			return nil, err
		}
		pods = append(pods, worker)
	}
	return pods, nil
}

// autoscalerSidecar is the container KubeRay adds to the head for the autoscaler: the head's
// image, with the securityContext, env and volume mounts of autoscalerOptions.
func autoscalerSidecar(options map[string]any, head corev1.PodSpec) (corev1.Container, error) {
	var container corev1.Container
	if options != nil {
		raw, err := json.Marshal(options)
		if err != nil {
			return container, err
		}
		// Only the fields a container shares with autoscalerOptions matter here.
		var shared struct {
			SecurityContext *corev1.SecurityContext     `json:"securityContext"`
			VolumeMounts    []corev1.VolumeMount        `json:"volumeMounts"`
			Resources       corev1.ResourceRequirements `json:"resources"`
		}
		if err := json.Unmarshal(raw, &shared); err != nil {
			return container, err
		}
		container.SecurityContext = shared.SecurityContext
		container.VolumeMounts = shared.VolumeMounts
		container.Resources = shared.Resources
	}
	container.Name = "autoscaler"
	if len(head.Containers) > 0 {
		container.Image = head.Containers[0].Image
	}
	return container, nil
}

func toPod(id, role string, raw any) (Pod, error) {
	if raw == nil {
		return Pod{}, fmt.Errorf("%s has no %s pod template", id, role)
	}
	data, err := json.Marshal(raw)
	if err != nil {
		return Pod{}, err
	}
	var t template
	if err := json.Unmarshal(data, &t); err != nil {
		return Pod{}, fmt.Errorf("%s %s pod template: %w", id, role, err)
	}
	return Pod{Object: id, Role: role, Meta: t.Metadata, Spec: t.Spec}, nil
}

func dig(value any, path ...string) any {
	for _, key := range path {
		m, ok := value.(map[string]any)
		if !ok {
			return nil
		}
		value = m[key]
	}
	return value
}

func asMap(value any) map[string]any {
	m, _ := value.(map[string]any)
	return m
}

func str(value any) string {
	s, _ := value.(string)
	return s
}
