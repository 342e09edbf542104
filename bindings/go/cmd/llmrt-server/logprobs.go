package main

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"sync"
	"unicode/utf8"

	"llmrt.dev/llmrt"
)

// minLogprob stands for -Inf (and NaN), which JSON cannot carry; vLLM answers the same.
const minLogprob = -9999.0

func finiteLogprob(v float32) float64 {
	f := float64(v)
	if math.IsInf(f, 0) || math.IsNaN(f) || f < minLogprob {
		return minLogprob
	}
	return f
}

// tokenTexts turns token ids into the strings logprobs show: each id decoded alone,
// special tokens kept. The vocabulary bounds the cache, so it is never evicted.
type tokenTexts struct {
	eng *llmrt.Engine
	mu  sync.RWMutex
	m   map[uint32]string
}

func newTokenTexts(eng *llmrt.Engine) *tokenTexts {
	return &tokenTexts{eng: eng, m: map[uint32]string{}}
}

func (t *tokenTexts) text(id uint32) string {
	t.mu.RLock()
	s, ok := t.m[id]
	t.mu.RUnlock()
	if ok {
		return s
	}
	s, err := t.eng.Detokenize([]uint32{id}, false)
	if err != nil {
		// Only an id outside the vocabulary (the library never returns one) or a
		// stopped engine fail; the id itself is then the most useful text.
		return "token_id:" + strconv.FormatUint(uint64(id), 10)
	}
	t.mu.Lock()
	t.m[id] = s
	t.mu.Unlock()
	return s
}

// utf8Bytes is a token's bytes as OpenAI lists them (a JSON list of integers, which
// []byte would not marshal to).
func utf8Bytes(s string) []int {
	out := make([]int, len(s))
	for i := 0; i < len(s); i++ {
		out[i] = int(s[i])
	}
	return out
}

// chatLogprobsOf gives the chat shape of a run of generated tokens' logprobs.
func (t *tokenTexts) chatLogprobsOf(lps []llmrt.Logprob) []chatTokenLogprob {
	out := make([]chatTokenLogprob, len(lps))
	for i, l := range lps {
		tok := t.text(l.TokenID)
		top := make([]chatTopLogprob, len(l.Top))
		for k, a := range l.Top {
			s := t.text(a.TokenID)
			top[k] = chatTopLogprob{Token: s, Logprob: finiteLogprob(a.Logprob), Bytes: utf8Bytes(s)}
		}
		out[i] = chatTokenLogprob{Token: tok, Logprob: finiteLogprob(l.Logprob), Bytes: utf8Bytes(tok), TopLogprobs: top}
	}
	return out
}

// appendCompletion appends tokens' logprobs to the legacy completions shape. offset is
// the text offset (in characters) of the first token; it returns the offset after the
// last. With a nil entry (the first prompt token under echo, which has no logprob) the
// token is listed with null logprobs.
func (t *tokenTexts) appendCompletion(dst *completionLogprobs, ids []uint32, lps []*llmrt.Logprob, offset int) int {
	for i, id := range ids {
		tok := t.text(id)
		dst.Tokens = append(dst.Tokens, tok)
		dst.TextOffset = append(dst.TextOffset, offset)
		offset += utf8.RuneCountInString(tok)
		l := lps[i]
		if l == nil {
			dst.TokenLogprobs = append(dst.TokenLogprobs, nil)
			dst.TopLogprobs = append(dst.TopLogprobs, nil)
			continue
		}
		v := finiteLogprob(l.Logprob)
		dst.TokenLogprobs = append(dst.TokenLogprobs, &v)
		dst.TopLogprobs = append(dst.TopLogprobs, t.topOf(l))
	}
	return offset
}

// topOf is a position's alternatives as a token -> logprob object, most likely first,
// with the chosen token among them (as vLLM lists it).
func (t *tokenTexts) topOf(l *llmrt.Logprob) orderedLogprobs {
	top := make(orderedLogprobs, 0, len(l.Top)+1)
	seen := false
	for _, a := range l.Top {
		seen = seen || a.TokenID == l.TokenID
		top = append(top, tokenLogprob{t.text(a.TokenID), finiteLogprob(a.Logprob)})
	}
	if !seen {
		top = append(top, tokenLogprob{t.text(l.TokenID), finiteLogprob(l.Logprob)})
	}
	return top
}

type tokenLogprob struct {
	token   string
	logprob float64
}

// orderedLogprobs is a JSON object from token to logprob that keeps its order (a Go map
// would sort the keys); nil is JSON null. A token string seen twice (two ids with the
// same text) keeps its first entry.
type orderedLogprobs []tokenLogprob

func (o orderedLogprobs) MarshalJSON() ([]byte, error) {
	if o == nil {
		return []byte("null"), nil
	}
	var b bytes.Buffer
	b.WriteByte('{')
	seen := make(map[string]bool, len(o))
	for _, e := range o {
		if seen[e.token] {
			continue
		}
		seen[e.token] = true
		if len(seen) > 1 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(e.token)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.WriteString(strconv.FormatFloat(e.logprob, 'g', -1, 64))
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}
