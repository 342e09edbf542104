package llmrt

import (
	"encoding/json"
	"fmt"
)

// Config is an engine's configuration: the model and vLLM-named engine options (see
// llmrt_engine_new in include/llmrt.h). Zero values mean the library's default; Extra
// carries options this struct does not name (and explicit zeros), merged at the top
// level and overriding the named fields. Unknown options are rejected by the library
// with ErrInvalidConfig.
type Config struct {
	// Model is a Hugging Face model folder or a GGUF file (required).
	Model                     string `json:"model"`
	MaxNumSeqs                int    `json:"max_num_seqs,omitempty"`
	MaxNumBatchedTokens       int    `json:"max_num_batched_tokens,omitempty"`
	MaxModelLen               int    `json:"max_model_len,omitempty"`
	BlockSize                 int    `json:"block_size,omitempty"`
	NumKVBlocks               int    `json:"num_kv_blocks,omitempty"`
	KVCacheMemoryBytes        uint64 `json:"kv_cache_memory_bytes,omitempty"`
	EnablePrefixCaching       *bool  `json:"enable_prefix_caching,omitempty"`
	EnableChunkedPrefill      *bool  `json:"enable_chunked_prefill,omitempty"`
	LongPrefillTokenThreshold int    `json:"long_prefill_token_threshold,omitempty"`
	NumSchedulerSteps         int    `json:"num_scheduler_steps,omitempty"`
	// SchedulingPolicy is "fcfs" or "priority".
	SchedulingPolicy string `json:"scheduling_policy,omitempty"`
	// PrefixCachingHashAlgo is "sha256" or "xxhash".
	PrefixCachingHashAlgo string `json:"prefix_caching_hash_algo,omitempty"`
	// MatmulPrecision is "exact" or "int8".
	MatmulPrecision string `json:"matmul_precision,omitempty"`
	// NumThreads: 0 is one per core.
	NumThreads int     `json:"num_threads,omitempty"`
	Seed       *uint64 `json:"seed,omitempty"`

	Extra map[string]any `json:"-"`
}

// MarshalJSON gives the configuration JSON llmrt_engine_new takes.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config
	return mergeExtra(plain(c), c.Extra)
}

// Message is one chat message. Content is usually a string; it may be nil or a list of
// content parts, as the model's chat template expects.
type Message struct {
	Role       string          `json:"role"`
	Content    any             `json:"content"`
	Name       string          `json:"name,omitempty"`
	ToolCalls  json.RawMessage `json:"tool_calls,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
}

// Chat is a conversation to render with the model's chat template (ApplyChatTemplate).
type Chat struct {
	Messages []Message `json:"messages"`
	// AddGenerationPrompt: nil is the library's default (true).
	AddGenerationPrompt *bool           `json:"add_generation_prompt,omitempty"`
	Tools               json.RawMessage `json:"tools,omitempty"`
	ChatTemplateKwargs  map[string]any  `json:"chat_template_kwargs,omitempty"`
}

// SamplingParams are vLLM's sampling fields. Nil pointers and zero values mean vLLM's
// defaults: max_tokens 16, temperature 1, top_p 1, top_k off, no seed, min_tokens 0,
// n 1, no penalties, no logprobs, skip_special_tokens true, detokenize true. Fields
// not named here (e.g. logprobs_mode, beam_width) go in Request.Extra.
type SamplingParams struct {
	// MaxTokens: 0 is the default (16); negative values are sent and rejected.
	MaxTokens int `json:"max_tokens,omitempty"`
	// Temperature: 0 is greedy; nil is the default (1). See Float.
	Temperature *float64 `json:"temperature,omitempty"`
	TopP        *float64 `json:"top_p,omitempty"`
	// TopK: 0 or -1 is off.
	TopK int      `json:"top_k,omitempty"`
	MinP *float64 `json:"min_p,omitempty"`
	// Seed makes sampling reproducible per request, whatever else runs.
	Seed              *int64   `json:"seed,omitempty"`
	MinTokens         int      `json:"min_tokens,omitempty"`
	IgnoreEOS         bool     `json:"ignore_eos,omitempty"`
	StopTokenIDs      []uint32 `json:"stop_token_ids,omitempty"`
	SkipSpecialTokens *bool    `json:"skip_special_tokens,omitempty"`
	Detokenize        *bool    `json:"detokenize,omitempty"`

	// Stop strings end a sequence (the text stops before them, or after them with
	// IncludeStopStrInOutput); Event.StopString says which one did.
	Stop                   []string `json:"stop,omitempty"`
	IncludeStopStrInOutput bool     `json:"include_stop_str_in_output,omitempty"`

	// N is the number of sequences to return (0: 1); events carry their Index.
	N int `json:"n,omitempty"`
	// BestOf samples that many sequences and returns the N most likely.
	BestOf int `json:"best_of,omitempty"`

	PresencePenalty   *float64 `json:"presence_penalty,omitempty"`
	FrequencyPenalty  *float64 `json:"frequency_penalty,omitempty"`
	RepetitionPenalty *float64 `json:"repetition_penalty,omitempty"`
	// LogitBias adds a bias to the logits of token ids.
	LogitBias map[uint32]float64 `json:"logit_bias,omitempty"`

	// Logprobs: nil is none; k records each generated token's logprob and the k most
	// likely alternatives (0..20, or -1 for the whole vocabulary). See Event.Logprobs.
	Logprobs *int `json:"logprobs,omitempty"`
	// PromptLogprobs: the same for the prompt's tokens. See Event.PromptLogprobs.
	PromptLogprobs *int `json:"prompt_logprobs,omitempty"`
}

// Request is a generation request, marshalled to the C API's request JSON. Give exactly
// one prompt form: Prompt (text, tokenized with the tokenizer's special tokens such as
// BOS), PromptTokenIDs (a non-nil slice), or Messages (a chat rendered with the model's
// chat template, with AddGenerationPrompt, Tools and ChatTemplateKwargs). When neither
// PromptTokenIDs nor Messages is set, Prompt is sent even if empty.
//
// Extra carries fields this struct does not name, merged at the top level (overriding
// named fields); the library rejects unknown fields with ErrInvalidRequest.
type Request struct {
	Prompt         string
	PromptTokenIDs []uint32
	Messages       []Message

	AddGenerationPrompt *bool
	Tools               json.RawMessage
	ChatTemplateKwargs  map[string]any

	// Priority: lower runs first under the "priority" scheduling policy.
	Priority int32
	// CacheSalt isolates the request's prefix-cache blocks from other tenants'.
	CacheSalt string

	// ReasoningParser ("deepseek_r1", "qwen3"; "" none) splits the output's reasoning
	// from its content: Event.Reasoning and Event.Text.
	ReasoningParser string
	// ToolCallParser ("hermes", "llama3_json", "llama4_json", "mistral", "pythonic",
	// "llama4_pythonic"; "" none) finds the tool calls in the output: Event.ToolCalls,
	// with the text outside them in Event.Text. The library rejects an unknown name
	// with ErrInvalidRequest.
	ToolCallParser string

	SamplingParams

	Extra map[string]any
}

// MarshalJSON gives the request JSON llmrt_engine_submit takes.
func (r Request) MarshalJSON() ([]byte, error) {
	type wire struct {
		Prompt              *string         `json:"prompt,omitempty"`
		PromptTokenIDs      []uint32        `json:"prompt_token_ids,omitempty"`
		Messages            []Message       `json:"messages,omitempty"`
		AddGenerationPrompt *bool           `json:"add_generation_prompt,omitempty"`
		Tools               json.RawMessage `json:"tools,omitempty"`
		ChatTemplateKwargs  map[string]any  `json:"chat_template_kwargs,omitempty"`
		Priority            int32           `json:"priority,omitempty"`
		CacheSalt           string          `json:"cache_salt,omitempty"`
		ReasoningParser     string          `json:"reasoning_parser,omitempty"`
		ToolCallParser      string          `json:"tool_call_parser,omitempty"`
		SamplingParams
	}
	w := wire{
		AddGenerationPrompt: r.AddGenerationPrompt,
		Tools:               r.Tools,
		ChatTemplateKwargs:  r.ChatTemplateKwargs,
		Priority:            r.Priority,
		CacheSalt:           r.CacheSalt,
		ReasoningParser:     r.ReasoningParser,
		ToolCallParser:      r.ToolCallParser,
		SamplingParams:      r.SamplingParams,
	}
	// omitempty drops empty slices; the library must see an empty prompt to reject it.
	extra := r.Extra
	if r.PromptTokenIDs != nil && len(r.PromptTokenIDs) == 0 {
		extra = withDefault(extra, "prompt_token_ids", []uint32{})
	}
	if r.Messages != nil && len(r.Messages) == 0 {
		extra = withDefault(extra, "messages", []Message{})
	}
	w.PromptTokenIDs = r.PromptTokenIDs
	w.Messages = r.Messages
	if r.Prompt != "" || (r.PromptTokenIDs == nil && r.Messages == nil) {
		p := r.Prompt
		w.Prompt = &p
	}
	return mergeExtra(w, extra)
}

// TokenParams are the sampling values of the JSON-free fast path (SubmitTokens).
type TokenParams struct {
	// MaxTokens: 0 is vLLM's default (16); negative values are passed on and rejected.
	MaxTokens int32
	// Temperature: 0 is greedy (unlike the JSON default of 1).
	Temperature float32
	// TopP: 0 or 1 is off.
	TopP float32
	// TopK: 0 or -1 is off.
	TopK int32
	// Seed: nil (or negative, as in the C API) is none. See Int.
	Seed *int64
	// IgnoreEOS keeps generating after an end-of-sequence token.
	IgnoreEOS bool
	// NoText produces token ids only (events carry empty text).
	NoText bool
	// KeepSpecialTokens keeps special tokens in the text.
	KeepSpecialTokens bool
}

// Float returns a pointer to v, for the optional float fields (Temperature, TopP).
func Float(v float64) *float64 { return &v }

// Int returns a pointer to v, for Seed.
func Int(v int64) *int64 { return &v }

// Count returns a pointer to v, for the optional counts (Logprobs, PromptLogprobs).
func Count(v int) *int { return &v }

// Bool returns a pointer to v, for the optional boolean fields.
func Bool(v bool) *bool { return &v }

// mergeExtra marshals v and adds (or overrides) the keys of extra at the top level.
func mergeExtra(v any, extra map[string]any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil || len(extra) == 0 {
		return b, err
	}
	m := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, x := range extra {
		xb, err := json.Marshal(x)
		if err != nil {
			return nil, fmt.Errorf("llmrt: field %q: %w", k, err)
		}
		m[k] = xb
	}
	return json.Marshal(m)
}

func withDefault(extra map[string]any, k string, v any) map[string]any {
	if _, ok := extra[k]; ok {
		return extra
	}
	m := make(map[string]any, len(extra)+1)
	for k2, v2 := range extra {
		m[k2] = v2
	}
	m[k] = v
	return m
}
