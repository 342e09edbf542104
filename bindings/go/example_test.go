package llmrt_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"llmrt.dev/llmrt"
)

// Streams one request's text. (Compiled, not run: it needs a model.)
func ExampleEngine_Submit() {
	eng, err := llmrt.New(llmrt.Config{Model: "path/to/model"})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // cancelling aborts the request
	events, err := eng.Submit(ctx, llmrt.Request{
		Messages:       []llmrt.Message{{Role: "user", Content: "Hello!"}},
		SamplingParams: llmrt.SamplingParams{MaxTokens: 64, Temperature: llmrt.Float(0.7)},
	})
	if errors.Is(err, llmrt.ErrInvalidRequest) {
		log.Fatalf("bad request: %v", err) // a client error (HTTP 400)
	} else if err != nil {
		log.Fatal(err)
	}
	for ev := range events {
		fmt.Print(ev.Text)
		if ev.Final() {
			fmt.Printf("\n[%s, %d tokens]\n", ev.FinishReason, ev.Usage.CompletionTokens)
		}
	}
}

// The JSON-free fast path: token ids in, token ids out.
func ExampleEngine_SubmitTokens() {
	eng, err := llmrt.New(llmrt.Config{Model: "path/to/model"})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()
	ids, err := eng.Tokenize("The old farmer walked", true)
	if err != nil {
		log.Fatal(err)
	}
	events, err := eng.SubmitTokens(context.Background(), ids, llmrt.TokenParams{MaxTokens: 32, NoText: true})
	if err != nil {
		log.Fatal(err)
	}
	res, err := llmrt.Collect(events)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.TokenIDs, res.FinishReason)
}
