// Command llmrt-server serves a model over an OpenAI-compatible HTTP API
// (/v1/completions, /v1/chat/completions, /v1/models) with /health and /metrics, on
// the llmrt engine through its Go binding.
//
//	llmrt-server --model PATH [--host 127.0.0.1] [--port 8000] [--api-key KEY] [engine options]
//
// Flags use vLLM's names. SIGTERM or SIGINT drains the server: it stops accepting,
// lets running requests finish within --shutdown-grace-period, aborts the rest and
// exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"llmrt.dev/llmrt"
)

// options are the command line's.
type options struct {
	model, host, servedModelName, apiKey string
	port                                 int
	maxNumSeqs, maxModelLen              int
	maxNumBatchedTokens, blockSize       int
	numKVBlocks, threads                 int
	enablePrefixCaching                  bool
	noEnablePrefixCaching                bool
	schedulingPolicy                     string
	seed                                 int64
	maxWaitingRequests                   int
	maxRequestBodyBytes                  int64
	shutdownGracePeriod                  time.Duration
	reasoningParser, toolCallParser      string
	enableAutoToolChoice                 bool
}

// defaultMaxNumSeqs is the library's own default, needed here to size admission.
const defaultMaxNumSeqs = 256

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("llmrt-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.model, "model", "", "model: a Hugging Face model folder or a GGUF file (required)")
	fs.StringVar(&o.host, "host", "127.0.0.1", "address to listen on (0.0.0.0: every interface)")
	fs.IntVar(&o.port, "port", 8000, "port to listen on (0: any free port)")
	fs.StringVar(&o.servedModelName, "served-model-name", "", "the model's name in the API (default: the model path's base name)")
	fs.StringVar(&o.apiKey, "api-key", os.Getenv("LLMRT_API_KEY"), "require this key as a Bearer token on /v1/ (default: $LLMRT_API_KEY)")
	fs.IntVar(&o.maxNumSeqs, "max-num-seqs", 0, "sequences run at once (default 256)")
	fs.IntVar(&o.maxModelLen, "max-model-len", 0, "context length (default: the model's)")
	fs.IntVar(&o.maxNumBatchedTokens, "max-num-batched-tokens", 0, "tokens per engine step (default: the library's)")
	fs.IntVar(&o.blockSize, "block-size", 0, "KV cache block size in tokens (default 16)")
	fs.IntVar(&o.numKVBlocks, "num-kv-blocks", 0, "KV cache blocks (default: sized by the library)")
	fs.IntVar(&o.threads, "threads", 0, "compute threads (default: one per core)")
	fs.BoolVar(&o.enablePrefixCaching, "enable-prefix-caching", true, "reuse the KV cache of shared prompt prefixes")
	fs.BoolVar(&o.noEnablePrefixCaching, "no-enable-prefix-caching", false, "disable prefix caching")
	fs.StringVar(&o.schedulingPolicy, "scheduling-policy", "", "fcfs or priority (default fcfs)")
	fs.Int64Var(&o.seed, "seed", -1, "the engine's seed (default: random)")
	fs.IntVar(&o.maxWaitingRequests, "max-waiting-requests", 256, "requests that may wait beyond --max-num-seqs; more get 503 with Retry-After")
	fs.Int64Var(&o.maxRequestBodyBytes, "max-request-body-bytes", 8<<20, "largest request body; larger ones get 413")
	fs.DurationVar(&o.shutdownGracePeriod, "shutdown-grace-period", 30*time.Second, "on SIGTERM/SIGINT, how long running requests may finish before they are aborted")
	fs.StringVar(&o.reasoningParser, "reasoning-parser", "", "split chat answers' reasoning (reasoning_content) from their content: deepseek_r1 or qwen3")
	fs.StringVar(&o.toolCallParser, "tool-call-parser", "", "the format of the model's tool calls, parsed under tool_choice auto: hermes, llama3_json, llama4_json, mistral, pythonic or llama4_pythonic")
	fs.BoolVar(&o.enableAutoToolChoice, "enable-auto-tool-choice", false, "serve tool_choice auto (the default with tools): the model may call tools, found with --tool-call-parser (required with it)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.model == "" {
		return nil, errors.New("--model is required")
	}
	if o.maxWaitingRequests < 0 || o.maxRequestBodyBytes < 1 || o.shutdownGracePeriod < 0 {
		return nil, errors.New("--max-waiting-requests, --max-request-body-bytes and --shutdown-grace-period must not be negative")
	}
	if o.enableAutoToolChoice && o.toolCallParser == "" {
		return nil, errors.New("--enable-auto-tool-choice requires --tool-call-parser")
	}
	if o.servedModelName == "" {
		o.servedModelName = filepath.Base(filepath.Clean(o.model))
	}
	return o, nil
}

// engineConfig gives the engine options to the library, which validates them.
func (o *options) engineConfig() llmrt.Config {
	cfg := llmrt.Config{
		Model: o.model, MaxNumSeqs: o.maxNumSeqs, MaxModelLen: o.maxModelLen,
		MaxNumBatchedTokens: o.maxNumBatchedTokens, BlockSize: o.blockSize,
		NumKVBlocks: o.numKVBlocks, NumThreads: o.threads, SchedulingPolicy: o.schedulingPolicy,
		EnablePrefixCaching: llmrt.Bool(o.enablePrefixCaching && !o.noEnablePrefixCaching),
	}
	if o.seed >= 0 {
		seed := uint64(o.seed)
		cfg.Seed = &seed
	}
	return cfg
}

func (o *options) serverConfig() serverConfig {
	seqs := o.maxNumSeqs
	if seqs == 0 {
		seqs = defaultMaxNumSeqs
	}
	return serverConfig{
		ModelName: o.servedModelName, ModelPath: o.model, APIKey: o.apiKey,
		MaxInFlight: seqs + o.maxWaitingRequests, MaxBodyBytes: o.maxRequestBodyBytes,
		ReasoningParser: o.reasoningParser, ToolCallParser: o.toolCallParser,
		AutoToolChoice: o.enableAutoToolChoice,
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is the whole program; it returns the exit status.
func run(args []string, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "llmrt-server:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // the first signal drains; a second one ends the process at once
	}()
	if err := serveModel(ctx, opts, log); err != nil {
		log.Error("llmrt-server failed", "err", err)
		return 1
	}
	return 0
}

// serveModel loads the model, serves until ctx is done, drains and closes the engine.
func serveModel(ctx context.Context, opts *options, log *slog.Logger) error {
	log.Info("loading the model", "model", opts.model, "llmrt", llmrt.Version())
	eng, err := llmrt.New(opts.engineConfig())
	if err != nil {
		return err
	}
	defer eng.Close()
	srv, err := newServer(eng, opts.serverConfig(), log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(opts.host, strconv.Itoa(opts.port)))
	if err != nil {
		return err
	}
	log.Info("serving", "url", "http://"+ln.Addr().String(), "model", opts.servedModelName)
	return srv.serve(ctx, ln, opts.shutdownGracePeriod)
}

// serve answers on ln until ctx is done, then drains: it stops accepting, lets running
// requests finish within grace, aborts the rest, and returns once every handler has
// returned. A nil error is a clean shutdown.
func (s *Server) serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	// No ReadTimeout or WriteTimeout: an answer streams as long as its generation runs,
	// and a read deadline would also cancel the request's context (aborting it).
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return s.baseCtx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "grace", grace)
	s.draining.Store(true)
	graceCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := hs.Shutdown(graceCtx); err == nil {
		return nil
	}
	// The grace period is over: abort what still runs. Handlers then end their answers
	// (a stream gets an error chunk), and the connections close.
	s.log.Warn("aborting the requests still running", "requests", s.inFlight.Load())
	s.abortAll()
	s.waitIdle(10 * time.Second)
	return hs.Close()
}

// waitIdle waits until no generation is in flight, at most for d.
func (s *Server) waitIdle(d time.Duration) {
	deadline := time.Now().Add(d)
	for s.inFlight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}
