package main

import (
	"encoding/json"
	"strconv"

	"llmrt.dev/llmrt"
)

// maxTopLogprobs is the most alternatives per token a request may ask for (OpenAI's
// and the library's limit).
const maxTopLogprobs = 20

// generation is what both endpoints hand to the engine: one llmrt request per prompt
// (a completions request may carry several), each asking for n sequences.
type generation struct {
	requests []llmrt.Request
	n        int
}

// samplingParams maps the shared request fields to llmrt's. maxTokens is the endpoint's
// resolved max_tokens (0: the library's default). The library validates the values and
// names the offending field, so only what this server interprets itself is checked here.
func (c *commonRequest) samplingParams(maxTokens int) (llmrt.SamplingParams, map[string]any, *apiError) {
	p := llmrt.SamplingParams{
		MaxTokens:              maxTokens,
		TopK:                   deref(c.TopK),
		MinTokens:              deref(c.MinTokens),
		Temperature:            c.Temperature,
		TopP:                   c.TopP,
		MinP:                   c.MinP,
		Seed:                   c.Seed,
		IgnoreEOS:              c.IgnoreEOS,
		StopTokenIDs:           c.StopTokenIDs,
		SkipSpecialTokens:      c.SkipSpecialTokens,
		IncludeStopStrInOutput: c.IncludeStopStrInOutput,
		PresencePenalty:        c.PresencePenalty,
		FrequencyPenalty:       c.FrequencyPenalty,
		RepetitionPenalty:      c.RepetitionPenalty,
	}
	// Fields whose zero value means something else to the library than "unset" travel
	// in extra, with their value as given.
	extra := map[string]any{}
	if c.BestOf != nil {
		extra["best_of"] = *c.BestOf
	}
	if len(c.Stop) > 0 && string(c.Stop) != "null" {
		extra["stop"] = c.Stop // a string or a list: the library takes both
	}
	if c.LogitBias != nil {
		bias, err := logitBias(c.LogitBias)
		if err != nil {
			return p, nil, err
		}
		p.LogitBias = bias
	}
	n, err := c.choices()
	if err != nil {
		return p, nil, err
	}
	p.N = n
	return p, extra, nil
}

// choices is the request's n (default 1).
func (c *commonRequest) choices() (int, *apiError) {
	if c.N == nil {
		return 1, nil
	}
	if *c.N < 1 {
		return 0, badRequest("n", "n must be at least 1, got %d", *c.N)
	}
	return *c.N, nil
}

// checkMaxTokens rejects a max_tokens below 1 (0 would read as "unset" downstream).
func checkMaxTokens(name string, v *int) *apiError {
	if v != nil && *v < 1 {
		return badRequest(name, "%s must be at least 1, got %d", name, *v)
	}
	return nil
}

// logitBias converts OpenAI's {"token id": bias} keys to token ids.
func logitBias(m map[string]float64) (map[uint32]float64, *apiError) {
	out := make(map[uint32]float64, len(m))
	for k, v := range m {
		id, err := strconv.ParseUint(k, 10, 32)
		if err != nil {
			return nil, badRequest("logit_bias", "logit_bias key %q is not a token id", k)
		}
		out[uint32(id)] = v
	}
	return out, nil
}

// streamUsage reports whether a stream ends with a usage chunk, and checks that
// stream_options comes only with stream, as OpenAI does.
func (c *commonRequest) streamUsage() (bool, *apiError) {
	if c.StreamOptions == nil {
		return false, nil
	}
	if !c.Stream {
		return false, badRequest("stream_options", "stream_options is only allowed when stream is true")
	}
	return c.StreamOptions.IncludeUsage, nil
}

// structuredOutputs resolves the request's output constraint to vLLM's
// structured_outputs object (nil: none): structured_outputs as given, else the older
// guided_* fields, else response_format.
func (c *commonRequest) structuredOutputs() (json.RawMessage, *apiError) {
	if len(c.StructuredOutputs) > 0 && string(c.StructuredOutputs) != "null" {
		return c.StructuredOutputs, nil
	}
	guided := map[string]any{}
	if len(c.GuidedJSON) > 0 && string(c.GuidedJSON) != "null" {
		guided["json"] = c.GuidedJSON
	}
	if c.GuidedRegex != nil {
		guided["regex"] = *c.GuidedRegex
	}
	if c.GuidedChoice != nil {
		guided["choice"] = c.GuidedChoice
	}
	if c.GuidedGrammar != nil {
		guided["grammar"] = *c.GuidedGrammar
	}
	if len(guided) > 0 {
		return marshalRaw(guided), nil
	}
	return c.ResponseFormat.structuredOutputs()
}

// structuredOutputs maps OpenAI's response_format to structured_outputs.
func (f *responseFormat) structuredOutputs() (json.RawMessage, *apiError) {
	if f == nil {
		return nil, nil
	}
	switch f.Type {
	case "text":
		return nil, nil
	case "json_object":
		return json.RawMessage(`{"json_object":true}`), nil
	case "json_schema":
		if f.JSONSchema == nil || len(f.JSONSchema.Schema) == 0 {
			return nil, badRequest("response_format.json_schema.schema", "response_format of type json_schema needs json_schema.schema")
		}
		return marshalRaw(map[string]any{"json": f.JSONSchema.Schema}), nil
	}
	return nil, badRequest("response_format.type", "response_format.type must be text, json_object or json_schema, got %q", f.Type)
}

// withStructuredOutputs adds the constraint to a request's extra fields (the library
// validates it: an invalid schema or regex is a 400 naming structured_outputs).
func withStructuredOutputs(extra map[string]any, so json.RawMessage) {
	if so != nil {
		extra["structured_outputs"] = so
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func marshalRaw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of JSON values are marshalled here
	}
	return b
}
