// pulumi-resource-command: a provider plugin for the `command` package, built by this project
// because the upstream provider module (github.com/pulumi/pulumi-command/provider) is not served by
// the Go module proxy reachable here (every version, pseudo-version and the version list answer 403).
//
// It implements, with the upstream schema's names and defaults, the resources and the invoke that
// jhe-upgrade uses through the unmodified @pulumi/command 1.2.x SDK:
//
//	command:remote:Command  create/update/delete over SSH (host key pinning, stdin, environment,
//	                        triggers, logging, dial retries, bastion proxy)
//	command:local:Command   create/update/delete on the machine running Pulumi
//	command:local:run       invoke, runs during preview too (read-only queries)
//
// Anything else (CopyToRemote, CopyFile, assetPaths/archivePaths) is refused in Check with a clear
// error instead of being silently ignored.
//
// Behaviour mirrors the official v1.2.1 (provider/pkg/provider/remote/ and util/ of
// github.com/pulumi/pulumi-command, on pulumi-go-provider v1.3.0): only the pinned host key's
// algorithm is negotiated (connection.go, SSHConfig); every dial error is retried, 100 ms x1.5 up to
// 5 s, "after N failed attempts: ..." (connection.go, dialWithRetry); key, password, keyboard-
// interactive, then the agent whenever a socket is found; a failure is "<err>: running \"<cmd>\":\n"
// plus all output (commandOutputs.go, run); output streams as status lines (util.go, LogOutput);
// a refused `environment` variable is an error, a refused PULUMI_COMMAND_STDOUT/STDERR (set on update
// and delete when not empty) a warning. tests/conformance states each behaviour the program uses.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Version is stamped with -ldflags "-X .../engine/command.Version=...".
var Version = "1.2.1"

const (
	typeRemoteCommand = "command:remote:Command"
	typeLocalCommand  = "command:local:Command"
	invokeLocalRun    = "command:local:run"
)

var outputKeys = map[resource.PropertyKey]bool{"stdout": true, "stderr": true, "assets": true, "archive": true}

type server struct {
	pulumirpc.UnimplementedResourceProviderServer
	host   *provider.HostClient
	ctx    context.Context
	cancel context.CancelFunc
}

func main() {
	err := provider.Main("command", func(host *provider.HostClient) (pulumirpc.ResourceProviderServer, error) {
		ctx, cancel := context.WithCancel(context.Background())
		return &server{host: host, ctx: ctx, cancel: cancel}, nil
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-resource-command: %v\n", err)
		os.Exit(1)
	}
}

// ---- plumbing ------------------------------------------------------------------------------

var keepAll = plugin.MarshalOptions{KeepUnknowns: true, KeepSecrets: true, SkipNulls: true}
var plainOpts = plugin.MarshalOptions{KeepUnknowns: true, KeepSecrets: false, SkipNulls: true}

func unmarshal(s *structpb.Struct, opts plugin.MarshalOptions) (resource.PropertyMap, error) {
	if s == nil {
		return resource.PropertyMap{}, nil
	}
	return plugin.UnmarshalProperties(s, opts)
}

func marshal(m resource.PropertyMap) (*structpb.Struct, error) {
	return plugin.MarshalProperties(m, keepAll)
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *server) logf(urn string, sev diag.Severity, format string, args ...any) {
	if s.host == nil {
		return
	}
	_ = s.host.Log(context.Background(), sev, resource.URN(urn), fmt.Sprintf(format, args...))
}

// statusf logs a status message: shown while it is the latest, absent from the final diagnostics.
func (s *server) statusf(urn string, sev diag.Severity, format string, args ...any) {
	if s.host == nil {
		return
	}
	_ = s.host.LogStatus(context.Background(), sev, resource.URN(urn), fmt.Sprintf(format, args...))
}

func tokenOf(urn string) string { return string(resource.URN(urn).Type()) }

// ---- provider-level RPCs -------------------------------------------------------------------

func (s *server) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: Version}, nil
}

func (s *server) GetSchema(context.Context, *pulumirpc.GetSchemaRequest) (*pulumirpc.GetSchemaResponse, error) {
	return &pulumirpc.GetSchemaResponse{Schema: fmt.Sprintf(`{"name":"command","version":%q}`, Version)}, nil
}

func (s *server) CheckConfig(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	return &pulumirpc.CheckResponse{Inputs: req.GetNews()}, nil
}

func (s *server) DiffConfig(context.Context, *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	return &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE}, nil
}

func (s *server) Configure(context.Context, *pulumirpc.ConfigureRequest) (*pulumirpc.ConfigureResponse, error) {
	return &pulumirpc.ConfigureResponse{AcceptSecrets: true, SupportsPreview: true}, nil
}

func (s *server) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	s.cancel()
	return &emptypb.Empty{}, nil
}

// ---- resources -----------------------------------------------------------------------------

func (s *server) Check(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	news, err := unmarshal(req.GetNews(), keepAll)
	if err != nil {
		return nil, err
	}
	var failures []*pulumirpc.CheckFailure
	fail := func(prop, reason string) {
		failures = append(failures, &pulumirpc.CheckFailure{Property: prop, Reason: reason})
	}
	switch tokenOf(req.GetUrn()) {
	case typeRemoteCommand:
		if !news.HasValue("connection") {
			fail("connection", "connection is required: give at least connection.host")
		}
	case typeLocalCommand:
		for _, k := range []resource.PropertyKey{"assetPaths", "archivePaths"} {
			if news.HasValue(k) {
				fail(string(k), string(k)+" is not supported by this build of the command provider; "+
					"print what you need on stdout instead")
			}
		}
	default:
		return nil, fmt.Errorf("resource type %s is not implemented by this build of the command provider "+
			"(it implements %s and %s)", tokenOf(req.GetUrn()), typeRemoteCommand, typeLocalCommand)
	}
	if v, ok := news["logging"]; ok && v.IsString() {
		switch v.StringValue() {
		case "stdout", "stderr", "stdoutAndStderr", "none":
		default:
			fail("logging", fmt.Sprintf("logging must be one of stdout, stderr, stdoutAndStderr, none (got %q)",
				v.StringValue()))
		}
	}
	return &pulumirpc.CheckResponse{Inputs: req.GetNews(), Failures: failures}, nil
}

// Diff: `triggers` changes replace the resource; any other input change is an update (which runs
// `update`, or `create` again when no `update` is given), as upstream does.
func (s *server) Diff(_ context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	oldsStruct := req.GetOldInputs()
	if oldsStruct == nil {
		oldsStruct = req.GetOlds()
	}
	olds, err := unmarshal(oldsStruct, keepAll)
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews(), keepAll)
	if err != nil {
		return nil, err
	}
	keys := map[resource.PropertyKey]bool{}
	for k := range olds {
		keys[k] = true
	}
	for k := range news {
		keys[k] = true
	}
	var diffs, replaces []string
	detailed := map[string]*pulumirpc.PropertyDiff{}
	for k := range keys {
		if outputKeys[k] {
			continue
		}
		o, hasOld := olds[k]
		n, hasNew := news[k]
		if hasOld && hasNew && !n.ContainsUnknowns() && o.DeepEquals(n) {
			continue
		}
		if !hasOld && hasNew && n.IsNull() || hasOld && !hasNew && o.IsNull() {
			continue
		}
		kind := pulumirpc.PropertyDiff_UPDATE
		switch {
		case !hasOld:
			kind = pulumirpc.PropertyDiff_ADD
		case !hasNew:
			kind = pulumirpc.PropertyDiff_DELETE
		}
		if k == "triggers" {
			replaces = append(replaces, string(k))
			kind = map[pulumirpc.PropertyDiff_Kind]pulumirpc.PropertyDiff_Kind{
				pulumirpc.PropertyDiff_ADD:    pulumirpc.PropertyDiff_ADD_REPLACE,
				pulumirpc.PropertyDiff_DELETE: pulumirpc.PropertyDiff_DELETE_REPLACE,
				pulumirpc.PropertyDiff_UPDATE: pulumirpc.PropertyDiff_UPDATE_REPLACE,
			}[kind]
		}
		diffs = append(diffs, string(k))
		detailed[string(k)] = &pulumirpc.PropertyDiff{Kind: kind, InputDiff: true}
	}
	sort.Strings(diffs)
	changes := pulumirpc.DiffResponse_DIFF_NONE
	if len(diffs) > 0 {
		changes = pulumirpc.DiffResponse_DIFF_SOME
	}
	return &pulumirpc.DiffResponse{
		Changes: changes, Diffs: diffs, Replaces: replaces,
		DetailedDiff: detailed, HasDetailedDiff: true,
	}, nil
}

func (s *server) Create(_ context.Context, req *pulumirpc.CreateRequest) (*pulumirpc.CreateResponse, error) {
	props, err := s.run(req.GetUrn(), req.GetProperties(), nil, "create", req.GetPreview())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CreateResponse{Id: newID(), Properties: props}, nil
}

func (s *server) Update(_ context.Context, req *pulumirpc.UpdateRequest) (*pulumirpc.UpdateResponse, error) {
	props, err := s.run(req.GetUrn(), req.GetNews(), req.GetOlds(), "update", req.GetPreview())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.UpdateResponse{Properties: props}, nil
}

func (s *server) Delete(_ context.Context, req *pulumirpc.DeleteRequest) (*emptypb.Empty, error) {
	_, err := s.run(req.GetUrn(), req.GetProperties(), req.GetProperties(), "delete", false)
	return &emptypb.Empty{}, err
}

func (s *server) Read(_ context.Context, req *pulumirpc.ReadRequest) (*pulumirpc.ReadResponse, error) {
	// A command's state is what it printed when it ran; there is nothing to read back.
	return &pulumirpc.ReadResponse{Id: req.GetId(), Properties: req.GetProperties(), Inputs: req.GetInputs()}, nil
}

func (s *server) Invoke(_ context.Context, req *pulumirpc.InvokeRequest) (*pulumirpc.InvokeResponse, error) {
	if req.GetTok() != invokeLocalRun {
		return nil, fmt.Errorf("function %s is not implemented by this build of the command provider", req.GetTok())
	}
	args, err := unmarshal(req.GetArgs(), plainOpts)
	if err != nil {
		return nil, err
	}
	spec := specFrom(args, "command")
	stdout, stderr, err := s.runLocal("", spec, nil)
	if err != nil {
		return nil, err
	}
	args["stdout"] = resource.NewStringProperty(stdout)
	args["stderr"] = resource.NewStringProperty(stderr)
	out, err := marshal(args)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.InvokeResponse{Return: out}, nil
}

// ---- running -------------------------------------------------------------------------------

// spec is what one run needs, read from plain (secret-unwrapped) inputs.
type spec struct {
	command     string
	stdin       string
	dir         string
	interpreter []string
	env         map[string]string
	logging     string
	addPrevEnv  bool
	connection  resource.PropertyMap
}

func str(m resource.PropertyMap, k resource.PropertyKey) string {
	if v, ok := m[k]; ok && v.IsString() {
		return v.StringValue()
	}
	return ""
}

func specFrom(in resource.PropertyMap, which resource.PropertyKey) spec {
	sp := spec{
		command: str(in, which), stdin: str(in, "stdin"), dir: str(in, "dir"),
		logging: str(in, "logging"), addPrevEnv: true, env: map[string]string{},
	}
	if v, ok := in["addPreviousOutputInEnv"]; ok && v.IsBool() {
		sp.addPrevEnv = v.BoolValue()
	}
	if v, ok := in["environment"]; ok && v.IsObject() {
		for k, e := range v.ObjectValue() {
			if e.IsString() {
				sp.env[string(k)] = e.StringValue()
			}
		}
	}
	if v, ok := in["interpreter"]; ok && v.IsArray() {
		for _, e := range v.ArrayValue() {
			if e.IsString() {
				sp.interpreter = append(sp.interpreter, e.StringValue())
			}
		}
	}
	if v, ok := in["connection"]; ok && v.IsObject() {
		sp.connection = v.ObjectValue()
	}
	return sp
}

// run executes the create/update/delete command of a resource and returns its new state.
func (s *server) run(urn string, inputs, olds *structpb.Struct, op string, preview bool) (*structpb.Struct, error) {
	state, err := unmarshal(inputs, keepAll)
	if err != nil {
		return nil, err
	}
	plain, err := unmarshal(inputs, plainOpts)
	if err != nil {
		return nil, err
	}
	for k := range outputKeys {
		delete(state, k)
	}
	which := resource.PropertyKey(op)
	if op == "update" && str(plain, "update") == "" {
		which = "create"
	}
	sp := specFrom(plain, which)
	if op == "delete" && sp.command == "" {
		return nil, nil
	}
	if preview || plain.ContainsUnknowns() {
		state["stdout"] = resource.MakeComputed(resource.NewStringProperty(""))
		state["stderr"] = resource.MakeComputed(resource.NewStringProperty(""))
		return marshal(state)
	}
	var prev map[string]string
	if olds != nil && sp.addPrevEnv {
		o, err := unmarshal(olds, plainOpts)
		if err != nil {
			return nil, err
		}
		prev = map[string]string{"PULUMI_COMMAND_STDOUT": str(o, "stdout"), "PULUMI_COMMAND_STDERR": str(o, "stderr")}
	}
	var stdout, stderr string
	if sp.command != "" {
		if tokenOf(urn) == typeRemoteCommand {
			stdout, stderr, err = s.runRemote(urn, sp, prev)
		} else {
			stdout, stderr, err = s.runLocal(urn, sp, prev)
		}
		if err != nil {
			return nil, err
		}
	}
	if op == "delete" {
		return nil, nil
	}
	state["stdout"] = resource.NewStringProperty(stdout)
	state["stderr"] = resource.NewStringProperty(stderr)
	return marshal(state)
}

// capture keeps a command's stdout, stderr and both interleaved as they arrive (upstream's
// stdouterrbuf, which its failure message carries whole), and streams the lines of the streams that
// `logging` selects (default: both) as status messages - shown while they are the latest, not kept
// in the final output (upstream: util.LogOutput -> InfoStatus -> host.LogStatus, severity info).
type capture struct {
	s                        *server
	urn                      string
	logOut, logErr           bool
	mu                       sync.Mutex
	out, err, combined, line strings.Builder
}

type captureStream struct {
	c      *capture
	stderr bool
}

func newCapture(s *server, urn, logging string) *capture {
	return &capture{s: s, urn: urn,
		logOut: logging == "" || logging == "stdout" || logging == "stdoutAndStderr",
		logErr: logging == "" || logging == "stderr" || logging == "stdoutAndStderr"}
}

func (c *capture) stdout() io.Writer { return &captureStream{c, false} }
func (c *capture) stderr() io.Writer { return &captureStream{c, true} }

func (w *captureStream) Write(p []byte) (int, error) {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.stderr {
		c.err.Write(p)
	} else {
		c.out.Write(p)
	}
	c.combined.Write(p)
	if c.urn == "" || (w.stderr && !c.logErr) || (!w.stderr && !c.logOut) {
		return len(p), nil
	}
	c.line.Write(p)
	for {
		b := c.line.String()
		i := strings.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		c.s.statusf(c.urn, diag.Info, "%s", strings.TrimSuffix(b[:i], "\r"))
		c.line.Reset()
		c.line.WriteString(b[i+1:])
	}
	return len(p), nil
}

// finish returns stdout and stderr without one trailing newline (as upstream stores them), and the
// interleaved output as it came.
func (c *capture) finish() (string, string, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.urn != "" && c.line.Len() > 0 {
		c.s.statusf(c.urn, diag.Info, "%s", c.line.String())
		c.line.Reset()
	}
	return strings.TrimSuffix(c.out.String(), "\n"), strings.TrimSuffix(c.err.String(), "\n"), c.combined.String()
}

// commandFailed is upstream's failure text (commandOutputs.go, run): the error, the command quoted,
// then all its output as it came.
func commandFailed(err error, command, output string) error {
	return fmt.Errorf("%w: running %q:\n%s", err, command, output)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
