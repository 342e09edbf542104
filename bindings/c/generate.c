/*
 * generate: stream a completion from a model through the llmrt C API.
 *
 *   generate MODEL [PROMPT] [MAX_TOKENS] [--chat]
 *
 * MODEL is a Hugging Face model folder or a GGUF file. With --chat the prompt is sent as
 * one user message, rendered with the model's chat template. Text goes to stdout as it is
 * produced; the finish reason and token counts go to stderr. Greedy decoding.
 *
 * Build: cc generate.c $(pkg-config --cflags --libs llmrt) -o generate
 */
#include <llmrt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends `s` as a JSON string literal to `out` (capacity `cap`); returns 0 if too long. */
static int json_string(char *out, size_t cap, const char *s) {
    size_t at = 0;
    if (cap < 3) return 0;
    out[at++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        size_t n;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            n = 2;
        } else if (*p < 0x20) {
            n = (size_t)snprintf(esc, sizeof esc, "\\u%04x", *p);
        } else {
            esc[0] = (char)*p;
            n = 1;
        }
        if (at + n + 2 > cap) return 0;
        memcpy(out + at, esc, n);
        at += n;
    }
    out[at++] = '"';
    out[at] = 0;
    return 1;
}

static int fail(const char *what, llmrt_error *err) {
    fprintf(stderr, "%s: %s: %s\n", what, llmrt_error_code_name(llmrt_error_code(err)),
            llmrt_error_message(err));
    llmrt_error_free(err);
    return 1;
}

static bool on_progress(void *user_data, float progress, const char *stage) {
    (void)user_data;
    fprintf(stderr, "[%3.0f%%] %s\n", progress * 100.0, stage);
    return true;
}

static const char *reason_name(llmrt_reason r) {
    switch (r) {
    case LLMRT_FINISH_STOP: return "stop";
    case LLMRT_FINISH_LENGTH: return "length";
    case LLMRT_FINISH_ABORT: return "abort";
    case LLMRT_FINISH_ERROR: return "error";
    default: return "none";
    }
}

int main(int argc, char **argv) {
    const char *model = NULL, *prompt = "Hello";
    int max_tokens = 32, chat = 0, positional = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--chat") == 0)
            chat = 1;
        else if (positional == 0)
            model = argv[i], positional++;
        else if (positional == 1)
            prompt = argv[i], positional++;
        else if (positional == 2)
            max_tokens = atoi(argv[i]), positional++;
    }
    if (!model) {
        fprintf(stderr, "usage: %s MODEL [PROMPT] [MAX_TOKENS] [--chat]\n", argv[0]);
        return 2;
    }
    if (llmrt_abi_version() != LLMRT_ABI_VERSION) {
        fprintf(stderr, "libllmrt ABI %u, header ABI %u\n", llmrt_abi_version(),
                LLMRT_ABI_VERSION);
        return 1;
    }

    char quoted_model[4096], quoted_prompt[8192], json[16384];
    if (!json_string(quoted_model, sizeof quoted_model, model) ||
        !json_string(quoted_prompt, sizeof quoted_prompt, prompt)) {
        fprintf(stderr, "model path or prompt too long\n");
        return 2;
    }
    snprintf(json, sizeof json, "{\"model\": %s}", quoted_model);
    llmrt_engine *engine = NULL;
    llmrt_error *err = llmrt_engine_new(json, on_progress, NULL, &engine);
    if (err) return fail("loading the model", err);

    if (chat)
        snprintf(json, sizeof json,
                 "{\"messages\": [{\"role\": \"user\", \"content\": %s}], "
                 "\"max_tokens\": %d, \"temperature\": 0}",
                 quoted_prompt, max_tokens);
    else
        snprintf(json, sizeof json, "{\"prompt\": %s, \"max_tokens\": %d, \"temperature\": 0}",
                 quoted_prompt, max_tokens);
    uint64_t id = 0;
    err = llmrt_engine_submit(engine, json, 0, &id);
    if (err) {
        llmrt_engine_free(engine);
        return fail("submitting", err);
    }

    int status = 0;
    for (int done = 0; !done;) {
        llmrt_events *events = NULL;
        err = llmrt_engine_poll(engine, 64, 1000, &events);
        if (err) {
            status = fail("polling", err);
            break;
        }
        for (size_t i = 0; i < llmrt_events_count(events); i++) {
            size_t len = 0;
            const char *text = llmrt_event_text(events, i, &len);
            fwrite(text, 1, len, stdout);
            fflush(stdout);
            if (llmrt_event_kind(events, i) == LLMRT_EVENT_FINAL) {
                uint64_t prompt_tokens = 0, completion_tokens = 0, cached = 0;
                llmrt_event_usage(events, i, &prompt_tokens, &completion_tokens, &cached);
                llmrt_reason reason = llmrt_event_finish_reason(events, i);
                fprintf(stderr, "\nfinish_reason=%s prompt_tokens=%llu completion_tokens=%llu\n",
                        reason_name(reason), (unsigned long long)prompt_tokens,
                        (unsigned long long)completion_tokens);
                if (reason == LLMRT_FINISH_ERROR) {
                    fprintf(stderr, "error: %s\n", llmrt_event_error_message(events, i));
                    status = 1;
                }
                done = 1;
            }
        }
        llmrt_events_free(events);
    }
    llmrt_engine_free(engine);
    return status;
}
