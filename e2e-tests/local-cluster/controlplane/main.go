// Command localkube is a single binary holding every Kubernetes component of the local
// end-to-end cluster: embedded etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, and the node components kubelet and kube-proxy, all built from the
// k8s.io/kubernetes Go module (see go.mod / gen-gomod.sh). One binary, because the
// components share most of their packages: one cold build and one link instead of five.
// Each subcommand is the upstream command itself (its cmd/<name>/app constructor), so flags,
// configuration files and behaviour are exactly upstream's.
//
//	localkube etcd [--data-dir DIR] [--listen-client-url URL] [--listen-peer-url URL]
//	localkube kube-apiserver [--localkube-etcd-data-dir DIR] [--localkube-etcd-client-url URL]
//	                         [--localkube-etcd-peer-url URL] [kube-apiserver flags...]
//	localkube kube-controller-manager [kube-controller-manager flags...]
//	localkube kube-scheduler [kube-scheduler flags...]
//	localkube kubelet [kubelet flags...]
//	localkube kube-proxy [kube-proxy flags...]
//	localkube kubectl [kubectl args...]
//	localkube version
//
// With --localkube-etcd-data-dir, kube-apiserver starts etcd inside its own process
// first and points --etcd-servers at it (unless --etcd-servers is given).
package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // for timeZone support in CronJob

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage: localkube <command> [flags]

commands:
  etcd                      run embedded etcd only (--data-dir, --listen-client-url, --listen-peer-url, --unsafe-no-fsync=BOOL)
  kube-apiserver            run kube-apiserver; with --localkube-etcd-data-dir=DIR also embedded etcd in-process
                            (--localkube-etcd-client-url, --localkube-etcd-peer-url, --localkube-etcd-unsafe-no-fsync=BOOL)
  kube-controller-manager   run kube-controller-manager
  kube-scheduler            run kube-scheduler
  kubelet                   run a kubelet (a node: pods through its CRI runtime, containerd)
  kube-proxy                run kube-proxy (Services on a node)
  kubectl                   kubectl of the same Kubernetes version (the machine's may be too old or absent)
  version                   print the Kubernetes version compiled in
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "etcd":
		os.Exit(runEtcdOnly(args))
	case "kube-apiserver", "apiserver":
		os.Exit(runAPIServer(args))
	case "kube-controller-manager", "controller-manager":
		c := kcmapp.NewControllerManagerCommand()
		c.SetArgs(args)
		os.Exit(cli.Run(c))
	case "kube-scheduler", "scheduler":
		c := schedulerapp.NewSchedulerCommand()
		c.SetArgs(args)
		os.Exit(cli.Run(c))
	case "kubelet":
		c := kubeletapp.NewKubeletCommand(context.Background())
		c.SetArgs(args)
		os.Exit(cli.Run(c))
	case "kube-proxy", "proxy":
		c := proxyapp.NewProxyCommand()
		c.SetArgs(args)
		os.Exit(cli.Run(c))
	case "kubectl":
		// kubectl reads os.Args itself (plugins, completion): make it look like its own binary.
		os.Args = append([]string{"kubectl"}, args...)
		c := kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(c); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "version", "--version":
		fmt.Println(version.Get().GitVersion)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "localkube: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
}

type etcdOpts struct {
	dataDir    string
	clientURL  string
	peerURL    string
	noFsync    bool
	haveDirArg bool
}

// takeFlag removes "--name=value" or "--name value" from args and returns the value.
func takeFlag(args []string, name string) (string, bool, []string) {
	out := make([]string, 0, len(args))
	val, found := "", false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case strings.HasPrefix(a, "--"+name+"="):
			val, found = strings.TrimPrefix(a, "--"+name+"="), true
		case a == "--"+name && i+1 < len(args):
			val, found = args[i+1], true
			i++
		default:
			out = append(out, a)
		}
	}
	return val, found, out
}

func parseEtcdOpts(args []string, prefix string) (etcdOpts, []string, error) {
	o := etcdOpts{clientURL: "http://127.0.0.1:2379", peerURL: "http://127.0.0.1:2380", noFsync: true}
	var v string
	var ok bool
	if v, ok, args = takeFlag(args, prefix+"data-dir"); ok {
		o.dataDir, o.haveDirArg = v, true
	}
	if v, ok, args = takeFlag(args, prefix+"listen-client-url"); ok {
		o.clientURL = v
	}
	if v, ok, args = takeFlag(args, prefix+"client-url"); ok {
		o.clientURL = v
	}
	if v, ok, args = takeFlag(args, prefix+"listen-peer-url"); ok {
		o.peerURL = v
	}
	if v, ok, args = takeFlag(args, prefix+"peer-url"); ok {
		o.peerURL = v
	}
	if v, ok, args = takeFlag(args, prefix+"unsafe-no-fsync"); ok {
		o.noFsync = v == "true" || v == "1"
	}
	return o, args, nil
}

// startEtcd starts an embedded single-member etcd and waits until it serves.
func startEtcd(o etcdOpts) (*embed.Etcd, error) {
	cu, err := url.Parse(o.clientURL)
	if err != nil {
		return nil, fmt.Errorf("bad etcd client url %q: %w", o.clientURL, err)
	}
	pu, err := url.Parse(o.peerURL)
	if err != nil {
		return nil, fmt.Errorf("bad etcd peer url %q: %w", o.peerURL, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "localkube"
	cfg.Dir = o.dataDir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	cfg.UnsafeNoFsync = o.noFsync // throwaway test cluster: speed over durability
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "localkube: embedded etcd ready on %s (data dir %s)\n", o.clientURL, o.dataDir)
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
}

func runEtcdOnly(args []string) int {
	o, rest, _ := parseEtcdOpts(args, "")
	if len(rest) > 0 {
		fmt.Fprintf(os.Stderr, "localkube etcd: unknown arguments %v\n", rest)
		return 2
	}
	if !o.haveDirArg {
		o.dataDir = "localkube.etcd"
	}
	e, err := startEtcd(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "localkube etcd:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		e.Close()
		return 0
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "localkube etcd:", err)
		e.Close()
		return 1
	}
}

func runAPIServer(args []string) int {
	o, rest, _ := parseEtcdOpts(args, "localkube-etcd-")
	var e *embed.Etcd
	if o.haveDirArg {
		var err error
		if e, err = startEtcd(o); err != nil {
			fmt.Fprintln(os.Stderr, "localkube kube-apiserver:", err)
			return 1
		}
		hasServers := false
		for _, a := range rest {
			if a == "--etcd-servers" || strings.HasPrefix(a, "--etcd-servers=") {
				hasServers = true
			}
		}
		if !hasServers {
			rest = append(rest, "--etcd-servers="+o.clientURL)
		}
		go func() {
			// If etcd dies, the apiserver is useless: exit so supervisors notice.
			if err, ok := <-e.Err(); ok && err != nil {
				fmt.Fprintln(os.Stderr, "localkube: embedded etcd error:", err)
				os.Exit(1)
			}
		}()
	}
	c := apiserverapp.NewAPIServerCommand()
	c.SetArgs(rest)
	code := cli.Run(c)
	if e != nil {
		e.Close()
	}
	return code
}
