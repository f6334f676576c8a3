// rawcreate: the most direct pod creator and deleter we can write, as the apiserver's own
// limit that dask-kube and dask-kubernetes classic are compared against (issue 14), plus
// the one pod watcher every side of the benchmark is timed with.
//
//	rawcreate create --pod worker.json --count 1000 --concurrency 64 -n NS
//	    N concurrent POSTs of the same pod (generateName) over one HTTP/2 connection
//	rawcreate delete --selector k=v --concurrency 64 -n NS
//	    one metadata-only list, then concurrent DELETEs of every pod it returned
//	rawcreate watch --selector k=v -n NS
//	    list + watch; prints "<unix-nanos> <count>" each time the number of pods changes
//
// create and delete print one JSON summary line on stdout (status codes, 429s, latency).
// Standard library only: net/http speaks HTTP/2 over TLS by itself.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxRetries bounds how often a request answered 429 / 5xx is sent again.
const maxRetries = 8

type client struct {
	base   string
	http   *http.Client
	token  string
	protos sync.Map // negotiated protocols ("HTTP/2.0")
}

func newClient(c *Credentials, concurrency int) (*client, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.Insecure} //nolint:gosec // only when the kubeconfig says so
	if len(c.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(c.CAPEM) {
			return nil, errors.New("the certificate authority holds no PEM certificate")
		}
		tlsCfg.RootCAs = pool
	}
	if c.ClientCert != nil {
		pair, err := tls.X509KeyPair(c.ClientCert, c.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{pair}
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg,
		ForceAttemptHTTP2:   true, // a custom TLS config turns HTTP/2 off unless asked for
		MaxIdleConnsPerHost: concurrency,
		IdleConnTimeout:     90 * time.Second,
	}
	return &client{base: strings.TrimRight(c.Server, "/"), http: &http.Client{Transport: tr}, token: c.Token}, nil
}

func (c *client) do(ctx context.Context, method, path string, body []byte, accept string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	resp, err := c.http.Do(req)
	if err == nil {
		c.protos.Store(resp.Proto, true)
	}
	return resp, err
}

// outcome of one logical request (after retries).
type outcome struct {
	status  int
	tries   int
	latency time.Duration // of the last try
	err     error
}

// metadataOnly asks for an object's metadata only (the watch reads a pod's name, and a
// create's or delete's answer only its status): the API server then encodes, and this client
// receives, well under half of a small pod's bytes, as dask-kube's own creates ask
// (crates/dask-kube/src/apiserver/create.rs).
const metadataOnly = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

// send retries 429 (honouring Retry-After) and 5xx; a transport error is not retried,
// since a lost answer to a POST may still have created the pod. Answers come as metadata
// only, so the creator does no more work per pod than the clients compared with it.
func (c *client) send(ctx context.Context, method, path string, body []byte, statuses *statusCounts) outcome {
	var o outcome
	for o.tries = 1; ; o.tries++ {
		start := time.Now()
		resp, err := c.do(ctx, method, path, body, metadataOnly)
		o.latency = time.Since(start)
		if err != nil {
			o.err = err
			statuses.add("transport-error")
			return o
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		o.status = resp.StatusCode
		statuses.add(strconv.Itoa(resp.StatusCode))
		retryable := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500
		if !retryable || o.tries > maxRetries {
			return o
		}
		wait := 100 * time.Millisecond << min(o.tries-1, 5)
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = time.Duration(s) * time.Second
		}
		select {
		case <-ctx.Done():
			o.err = ctx.Err()
			return o
		case <-time.After(wait):
		}
	}
}

type statusCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (s *statusCounts) add(k string) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string]int{}
	}
	s.m[k]++
	s.mu.Unlock()
}

// summary is the JSON line create and delete print.
type summary struct {
	Op          string         `json:"op"`
	Requested   int            `json:"requested"`
	Succeeded   int            `json:"succeeded"`
	Failed      int            `json:"failed"`
	Concurrency int            `json:"concurrency"`
	Seconds     float64        `json:"seconds"`
	PerSecond   float64        `json:"per_second"`
	Statuses    map[string]int `json:"statuses"`
	Retries     int            `json:"retries"`
	P50Ms       float64        `json:"p50_ms"`
	P99Ms       float64        `json:"p99_ms"`
	MaxMs       float64        `json:"max_ms"`
	Protocols   []string       `json:"protocols"`
	FirstError  string         `json:"first_error,omitempty"`
}

// runAll sends n logical requests with at most `concurrency` in flight.
func runAll(ctx context.Context, c *client, op string, n, concurrency int, req func(i int) (method, path string, body []byte), ok func(status int) bool) summary {
	var (
		statuses  statusCounts
		next      atomic.Int64
		wg        sync.WaitGroup
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, n)
		s         = summary{Op: op, Requested: n, Concurrency: concurrency}
	)
	start := time.Now()
	for w := 0; w < min(concurrency, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				method, path, body := req(i)
				o := c.send(ctx, method, path, body, &statuses)
				mu.Lock()
				latencies = append(latencies, o.latency)
				s.Retries += o.tries - 1
				if o.err == nil && ok(o.status) {
					s.Succeeded++
				} else {
					s.Failed++
					if s.FirstError == "" {
						if o.err != nil {
							s.FirstError = o.err.Error()
						} else {
							s.FirstError = fmt.Sprintf("HTTP %d", o.status)
						}
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	s.Seconds = time.Since(start).Seconds()
	if s.Seconds > 0 {
		s.PerSecond = float64(s.Succeeded) / s.Seconds
	}
	s.Statuses = statuses.m
	if s.Statuses == nil {
		s.Statuses = map[string]int{}
	}
	s.P50Ms, s.P99Ms, s.MaxMs = percentiles(latencies)
	c.protos.Range(func(k, _ any) bool { s.Protocols = append(s.Protocols, k.(string)); return true })
	sort.Strings(s.Protocols)
	return s
}

func percentiles(d []time.Duration) (p50, p99, maxMs float64) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) float64 {
		i := int(q*float64(len(d))+0.5) - 1
		i = max(0, min(i, len(d)-1))
		return float64(d[i].Microseconds()) / 1000
	}
	return at(0.50), at(0.99), float64(d[len(d)-1].Microseconds()) / 1000
}

func podsPath(ns string) string { return "/api/v1/namespaces/" + url.PathEscape(ns) + "/pods" }

// podBody reads a pod manifest (JSON) and makes it a generateName pod in ns.
func podBody(file, ns, generateName string) ([]byte, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var pod map[string]any
	if err := json.Unmarshal(raw, &pod); err != nil {
		return nil, fmt.Errorf("%s: not a JSON pod: %w", file, err)
	}
	meta, _ := pod["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
	}
	delete(meta, "name")
	meta["generateName"] = generateName
	meta["namespace"] = ns
	pod["metadata"] = meta
	pod["apiVersion"] = "v1"
	pod["kind"] = "Pod"
	return json.Marshal(pod)
}

func create(ctx context.Context, c *client, ns, podFile, generateName string, count, concurrency int) (summary, error) {
	body, err := podBody(podFile, ns, generateName)
	if err != nil {
		return summary{}, err
	}
	path := podsPath(ns)
	return runAll(ctx, c, "create", count, concurrency,
		func(int) (string, string, []byte) { return http.MethodPost, path, body },
		func(s int) bool { return s == http.StatusCreated }), nil
}

type metaList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
		Continue        string `json:"continue"`
	} `json:"metadata"`
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	} `json:"items"`
}

// partialMetadata asks for metadata only: the list of 1000 pods is then a few hundred KB.
const partialMetadata = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"

func listNames(ctx context.Context, c *client, ns, selector string) ([]string, string, error) {
	q := url.Values{"labelSelector": {selector}}
	resp, err := c.do(ctx, http.MethodGet, podsPath(ns)+"?"+q.Encode(), nil, partialMetadata)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, "", fmt.Errorf("list pods: HTTP %d: %s", resp.StatusCode, b)
	}
	var l metaList
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		return nil, "", fmt.Errorf("list pods: %w", err)
	}
	names := make([]string, 0, len(l.Items))
	for _, it := range l.Items {
		names = append(names, it.Metadata.Name)
	}
	return names, l.Metadata.ResourceVersion, nil
}

func deleteAll(ctx context.Context, c *client, ns, selector string, concurrency int) (summary, error) {
	start := time.Now()
	names, _, err := listNames(ctx, c, ns, selector)
	if err != nil {
		return summary{}, err
	}
	path := podsPath(ns) + "/"
	body := []byte(`{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}`)
	s := runAll(ctx, c, "delete", len(names), concurrency,
		func(i int) (string, string, []byte) { return http.MethodDelete, path + url.PathEscape(names[i]), body },
		func(s int) bool { return s == http.StatusOK || s == http.StatusAccepted || s == http.StatusNotFound })
	s.Seconds = time.Since(start).Seconds() // the list is part of a scale to 0
	if s.Seconds > 0 {
		s.PerSecond = float64(s.Succeeded) / s.Seconds
	}
	return s, nil
}

type watchEvent struct {
	Type   string `json:"type"`
	Object struct {
		Metadata struct {
			Name            string `json:"name"`
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Code int `json:"code"`
	} `json:"object"`
}

// watch prints "<unix-nanos> <count>" whenever the number of matching pods changes,
// until ctx ends. A pod counts from ADDED until DELETED (an unscheduled pod is removed
// at once by a DELETE: it never lingers with a deletionTimestamp).
func watch(ctx context.Context, c *client, ns, selector string, out io.Writer) error {
	w := bufio.NewWriter(out)
	last := -1
	report := func(n int) {
		if n != last {
			last = n
			fmt.Fprintf(w, "%d %d\n", time.Now().UnixNano(), n)
			_ = w.Flush()
		}
	}
	for ctx.Err() == nil {
		names, rv, err := listNames(ctx, c, ns, selector)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		pods := make(map[string]struct{}, len(names))
		for _, n := range names {
			pods[n] = struct{}{}
		}
		report(len(pods))
		q := url.Values{"labelSelector": {selector}, "watch": {"1"}, "resourceVersion": {rv},
			"allowWatchBookmarks": {"true"}, "timeoutSeconds": {"3600"}}
		resp, err := c.do(ctx, http.MethodGet, podsPath(ns)+"?"+q.Encode(), nil, metadataOnly)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return fmt.Errorf("watch pods: HTTP %d", resp.StatusCode)
		}
		dec := json.NewDecoder(resp.Body)
		for {
			var ev watchEvent
			if err := dec.Decode(&ev); err != nil {
				break // closed by the server or by ctx: relist
			}
			switch ev.Type {
			case "ADDED", "MODIFIED":
				pods[ev.Object.Metadata.Name] = struct{}{}
			case "DELETED":
				delete(pods, ev.Object.Metadata.Name)
			}
			if ev.Type == "ERROR" {
				break // 410 Gone and the like: relist
			}
			report(len(pods))
		}
		resp.Body.Close()
	}
	return nil
}

func loadCredentials(kubeconfig, server, caFile, tokenFile string) (*Credentials, error) {
	if server != "" {
		c := &Credentials{Server: server}
		var err error
		if caFile != "" {
			if c.CAPEM, err = os.ReadFile(caFile); err != nil {
				return nil, err
			}
		}
		if tokenFile != "" {
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return nil, err
			}
			c.Token = strings.TrimSpace(string(b))
		}
		return c, nil
	}
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	if kubeconfig == "" {
		home, _ := os.UserHomeDir()
		kubeconfig = filepath.Join(home, ".kube", "config")
	}
	if i := strings.IndexByte(kubeconfig, os.PathListSeparator); i >= 0 {
		kubeconfig = kubeconfig[:i]
	}
	src, err := os.ReadFile(kubeconfig)
	if err != nil {
		return nil, err
	}
	return credentialsFromKubeconfig(string(src), filepath.Dir(kubeconfig), "")
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: rawcreate create|delete|watch [flags]  (rawcreate CMD -h for flags)")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
	server := fs.String("server", "", "apiserver URL (instead of a kubeconfig)")
	caFile := fs.String("ca-file", "", "CA bundle for --server")
	tokenFile := fs.String("token-file", "", "bearer token file for --server")
	ns := fs.String("n", "default", "namespace")
	concurrency := fs.Int("concurrency", 64, "requests in flight")
	count := fs.Int("count", 0, "create: pods to create")
	podFile := fs.String("pod", "", "create: pod manifest (JSON); its metadata.name is replaced by generateName")
	generateName := fs.String("generate-name", "raw-worker-", "create: metadata.generateName")
	selector := fs.String("selector", "", "delete/watch: label selector")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	switch cmd {
	case "create", "delete", "watch":
	default:
		usage()
	}
	_ = fs.Parse(os.Args[2:])
	if *concurrency < 1 {
		fmt.Fprintln(os.Stderr, "rawcreate: --concurrency must be at least 1")
		os.Exit(2)
	}
	creds, err := loadCredentials(*kubeconfig, *server, *caFile, *tokenFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rawcreate:", err)
		os.Exit(2)
	}
	c, err := newClient(creds, *concurrency)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rawcreate:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	var s summary
	switch cmd {
	case "create":
		if *podFile == "" || *count < 1 {
			fmt.Fprintln(os.Stderr, "rawcreate create: --pod and --count >= 1 are required")
			os.Exit(2)
		}
		s, err = create(ctx, c, *ns, *podFile, *generateName, *count, *concurrency)
	case "delete":
		if *selector == "" {
			fmt.Fprintln(os.Stderr, "rawcreate delete: --selector is required (it deletes every pod it matches)")
			os.Exit(2)
		}
		s, err = deleteAll(ctx, c, *ns, *selector, *concurrency)
	case "watch":
		if *selector == "" {
			fmt.Fprintln(os.Stderr, "rawcreate watch: --selector is required")
			os.Exit(2)
		}
		if err := watch(ctx, c, *ns, *selector, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "rawcreate watch:", err)
			os.Exit(1)
		}
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rawcreate:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(s)
	fmt.Println(string(out))
	if s.Failed > 0 {
		os.Exit(1)
	}
}
