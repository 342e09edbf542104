package dev.llmrt;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * An llmrt engine: a loaded model, its scheduler and its threads ({@code llmrt_engine}).
 *
 * <pre>{@code
 * try (Engine engine = Engine.create("{\"model\": \"path/to/model\"}")) {
 *     Request req = Request.prompt("Hello").maxTokens(16).temperature(0).build();
 *     for (RequestStream events = engine.submit(req); events.hasNext(); ) {
 *         System.out.print(events.next().text());
 *     }
 *     Result whole = engine.submitAsync(req).join();
 * }
 * }</pre>
 *
 * <p>Every method may be called from any number of threads at once. Each engine has one
 * poller thread (a daemon, "llmrt-poller-N") that takes event batches from the library
 * ({@code llmrt_engine_poll}) and hands each event to its request's {@link RequestStream} or
 * future. Completing a future runs its dependent stages on the poller thread unless they
 * are {@code *Async}; keep them short.
 *
 * <p>{@link #close()} stops the engine (every unfinished request gets its final event, with
 * {@link FinishReason#ABORT}), ends the poller thread and frees the native engine; it is
 * idempotent. Afterwards every method throws {@link IllegalStateException}. An engine that
 * is never closed keeps its native memory and poller thread until the process ends.
 */
public final class Engine implements AutoCloseable {
    private static final int POLL_BATCH = 256;
    private static final int POLL_TIMEOUT_MS = 1000;
    private static final AtomicLong ENGINES = new AtomicLong();

    // The native engine; 0 once freed. Read under the read lock, freed under the write lock.
    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private long handle;
    // The poller's copy: it never outlives the poller, which ends before the engine is freed.
    private final long pollHandle;
    private volatile boolean closing;
    private final Object closeMonitor = new Object();

    private final ConcurrentHashMap<Long, Sink> sinks = new ConcurrentHashMap<>();
    private final AtomicLong nextTag = new AtomicLong(1);
    private final Thread poller;
    private volatile boolean pollerDone;
    private volatile RuntimeException pollerFailure;

    private Engine(long handle) {
        this.handle = handle;
        this.pollHandle = handle;
        this.poller = new Thread(this::pollLoop, "llmrt-poller-" + ENGINES.incrementAndGet());
        this.poller.setDaemon(true);
        this.poller.start();
    }

    /**
     * Loads a model and starts an engine on it ({@code llmrt_engine_new}).
     *
     * @param configJson a JSON object with {@code model} (a Hugging Face model folder or a
     *     GGUF file) and vLLM-named engine options ({@code max_num_seqs},
     *     {@code max_model_len}, {@code num_threads}, ...; see include/llmrt.h)
     * @throws LlmrtException INVALID_JSON, INVALID_CONFIG (unknown option, wrong type, no
     *     model), INVALID_MODEL, UNSUPPORTED, IO, INTERNAL
     */
    public static Engine create(String configJson) {
        return create(configJson, null);
    }

    /**
     * As {@link #create(String)}, telling {@code listener} (may be null) how the load goes.
     *
     * @throws LlmrtException as {@link #create(String)}, and CANCELLED when the listener
     *     returned false
     */
    public static Engine create(String configJson, ProgressListener listener) {
        Objects.requireNonNull(configJson, "configJson");
        long h = Native.engineNew(Native.cString(configJson, "config_json"), listener);
        return new Engine(h);
    }

    /** Starts the configuration of an engine on {@code model} (a folder or a GGUF file). */
    public static Builder builder(String model) {
        return new Builder(model);
    }

    /** An engine's configuration: the model and vLLM-named options. */
    public static final class Builder {
        private final Map<String, Object> options = new LinkedHashMap<>();
        private ProgressListener listener;

        private Builder(String model) {
            options.put("model", Objects.requireNonNull(model, "model"));
        }

        /**
         * Sets an engine option (a String, Boolean or Number), e.g.
         * {@code option("num_threads", 2)}; the library rejects unknown ones.
         */
        public Builder option(String name, Object value) {
            Objects.requireNonNull(name, "name");
            Json.value(new StringBuilder(), value); // rejects types it cannot write
            options.put(name, value instanceof int[] ? ((int[]) value).clone() : value);
            return this;
        }

        /** {@code num_threads}: compute threads (0: one per core). */
        public Builder numThreads(int n) {
            return option("num_threads", n);
        }

        /** {@code max_model_len}: the longest sequence (prompt and output). */
        public Builder maxModelLen(int n) {
            return option("max_model_len", n);
        }

        /** {@code max_num_seqs}: requests run at once at most. */
        public Builder maxNumSeqs(int n) {
            return option("max_num_seqs", n);
        }

        /** Told how the load goes. */
        public Builder progressListener(ProgressListener listener) {
            this.listener = listener;
            return this;
        }

        /** The configuration as the JSON object {@code llmrt_engine_new} takes. */
        public String toJson() {
            return Json.object(options);
        }

        /** Loads the model: see {@link Engine#create(String, ProgressListener)}. */
        public Engine build() {
            return Engine.create(toJson(), listener);
        }
    }

    // ------------------------------------------------------------------ requests --

    /**
     * Submits a request; its events come through the returned stream, ending with exactly
     * one final event.
     *
     * @throws LlmrtException INVALID_JSON, INVALID_REQUEST (unknown field, wrong type, value
     *     out of range such as a negative {@code max_tokens}, empty or too long prompt, token
     *     id out of the vocabulary), TEMPLATE, TOKENIZER, ENGINE_STOPPED, INTERNAL
     * @throws IllegalStateException if the engine is closed
     */
    public RequestStream submit(Request request) {
        RequestStream stream = new RequestStream(this);
        stream.setRequestId(register(request, stream.sink));
        return stream;
    }

    /**
     * Submits a request and returns a future of its whole {@link Result}, completed when the
     * final event arrives (with any finish reason: STOP, LENGTH, ABORT or ERROR). Cancelling
     * the future aborts the request. The future completes exceptionally with a
     * {@link LlmrtException} only if the engine fails (or stops) before the final event.
     *
     * @throws LlmrtException as {@link #submit} (submission errors are thrown, not put in
     *     the future)
     * @throws IllegalStateException if the engine is closed
     */
    public CompletableFuture<Result> submitAsync(Request request) {
        ResultFuture future = new ResultFuture(this);
        future.setRequestId(register(request, future.sink));
        return future;
    }

    /** Submits a request and waits for its result: {@code submit(request).collect()}. */
    public Result generate(Request request) {
        return submit(request).collect();
    }

    /**
     * Aborts a request: its final event ({@link FinishReason#ABORT}) follows, unless it had
     * finished already. An unknown or finished id is not an error.
     *
     * @throws IllegalStateException if the engine is closed
     */
    public void abort(long requestId) {
        lock.readLock().lock();
        try {
            long h = checkOpen();
            try {
                Native.abort(h, requestId);
            } catch (LlmrtException e) {
                if (e.status() != Status.ENGINE_STOPPED) {
                    throw e;
                }
            }
        } finally {
            lock.readLock().unlock();
        }
    }

    /** Aborts unless the engine is closed or stopped (then every request ended already). */
    void abortQuietly(long requestId) {
        try {
            abort(requestId);
        } catch (IllegalStateException e) {
            // closed: every request was aborted by close()
        }
    }

    private long register(Request request, Sink sink) {
        Objects.requireNonNull(request, "request");
        boolean fast = request.usesTokenFastPath();
        byte[] json = fast ? null : Native.cString(request.toJson(), "request_json");
        long tag = nextTag.getAndIncrement();
        long id;
        lock.readLock().lock();
        try {
            long h = checkOpen();
            // Registered before the submit, so that no event can come before its sink.
            sinks.put(tag, sink);
            try {
                id = fast
                        ? Native.submitTokens(h, request.promptTokenIds(), request.maxTokens(),
                                request.temperature(), request.topP(), request.topK(),
                                request.seed(), request.flags(), tag)
                        : Native.submit(h, json, tag);
            } catch (RuntimeException | Error e) {
                sinks.remove(tag);
                throw e;
            }
        } finally {
            lock.readLock().unlock();
        }
        // The poller has ended (the engine failed): nobody would deliver the events. (Not
        // under the lock: failing a future runs its dependent stages.)
        if (pollerDone && sinks.remove(tag) != null) {
            sink.fail(endedFailure());
        }
        return id;
    }

    // ------------------------------------------------------------------ poller --

    private void pollLoop() {
        RuntimeException failure = null;
        try {
            while (true) {
                Event[] events;
                try {
                    events = Native.poll(pollHandle, POLL_BATCH, POLL_TIMEOUT_MS);
                } catch (LlmrtException e) {
                    if (e.status() != Status.ENGINE_STOPPED) {
                        failure = e;
                    }
                    break;
                }
                for (Event e : events) {
                    Sink sink = e.isFinal() ? sinks.remove(e.userTag()) : sinks.get(e.userTag());
                    if (sink != null) {
                        try {
                            sink.deliver(e);
                        } catch (RuntimeException ignored) {
                            // a dependent stage of a future threw: not the poller's concern
                        }
                    }
                }
            }
        } catch (RuntimeException | Error e) {
            failure = new LlmrtException(Status.INTERNAL, "the poller thread failed: " + e);
            failure.initCause(e);
        } finally {
            pollerFailure = failure;
            pollerDone = true;
            RuntimeException cause = endedFailure();
            for (Long tag : sinks.keySet()) {
                Sink sink = sinks.remove(tag);
                if (sink != null) {
                    sink.fail(cause);
                }
            }
            if (closing) {
                freeNative(); // close() was called on this thread, or is waiting for it
            }
        }
    }

    private RuntimeException endedFailure() {
        RuntimeException f = pollerFailure;
        if (f instanceof LlmrtException) {
            LlmrtException e = new LlmrtException(((LlmrtException) f).status(),
                    "the engine failed before the request finished: " + f.getMessage());
            e.initCause(f);
            return e;
        }
        return new LlmrtException(Status.ENGINE_STOPPED,
                "the engine stopped before the request finished");
    }

    // ------------------------------------------------------------------ utilities --

    private long checkOpen() {
        if (closing || handle == 0) {
            throw new IllegalStateException("the engine is closed");
        }
        return handle;
    }

    @FunctionalInterface
    private interface Call<T> {
        T apply(long handle);
    }

    private <T> T call(Call<T> f) {
        lock.readLock().lock();
        try {
            return f.apply(checkOpen());
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * Tokenizes text with the engine's tokenizer; {@code addSpecialTokens} applies the
     * tokenizer's post-processor (e.g. adds BOS) as a {@code prompt} request does.
     *
     * @throws LlmrtException TOKENIZER, INTERNAL
     */
    public int[] tokenize(String text, boolean addSpecialTokens) {
        byte[] utf8 = Objects.requireNonNull(text, "text").getBytes(
                java.nio.charset.StandardCharsets.UTF_8);
        return call(h -> Native.tokenize(h, utf8, addSpecialTokens));
    }

    /**
     * Turns token ids back into text; {@code skipSpecialTokens} leaves BOS, EOS, ... out.
     *
     * @throws LlmrtException INVALID_REQUEST (an id outside the vocabulary), TOKENIZER,
     *     INTERNAL
     */
    public String detokenize(int[] tokenIds, boolean skipSpecialTokens) {
        Objects.requireNonNull(tokenIds, "tokenIds");
        return Native.utf8(call(h -> Native.detokenize(h, tokenIds, skipSpecialTokens)));
    }

    /**
     * Renders a chat with the model's chat template, as a chat request would before
     * tokenizing (tokenize the result without special tokens).
     *
     * @throws LlmrtException INVALID_REQUEST (e.g. a model without a chat template),
     *     TEMPLATE, INTERNAL
     */
    public String applyChatTemplate(List<Message> messages, boolean addGenerationPrompt) {
        String json = Request.chat(messages).addGenerationPrompt(addGenerationPrompt)
                .forceJson(true).build().toJson();
        return applyChatTemplateJson(json);
    }

    /**
     * Renders a chat given as JSON: {@code {"messages": [...], "add_generation_prompt": bool,
     * "tools": [...], "chat_template_kwargs": {...}}}.
     *
     * @throws LlmrtException INVALID_JSON, INVALID_REQUEST (no messages, unknown field, wrong
     *     type, no chat template), TEMPLATE, INTERNAL
     */
    public String applyChatTemplateJson(String chatJson) {
        byte[] json = Native.cString(Objects.requireNonNull(chatJson, "chatJson"), "chat_json");
        return Native.utf8(call(h -> Native.applyChatTemplate(h, json)));
    }

    /** The engine's metrics as a JSON object (vLLM's names). */
    public String metricsJson() {
        return Native.utf8(call(Native::metricsJson));
    }

    /** The engine's metrics in Prometheus' text format, names prefixed {@code llmrt_}. */
    public String metricsPrometheus() {
        return Native.utf8(call(Native::metricsPrometheus));
    }

    /**
     * The model and limits as a JSON object: {@code architecture}, {@code vocab_size},
     * {@code max_model_len}, {@code eos_token_ids}, {@code has_chat_template}, ...
     */
    public String modelInfoJson() {
        return Native.utf8(call(Native::modelInfo));
    }

    // ------------------------------------------------------------------ closing --

    /** True once {@link #close()} has been called. */
    public boolean isClosed() {
        return closing;
    }

    /**
     * Stops the engine (unfinished requests get their final event, ABORT), waits for the
     * poller thread to deliver every event and end, then frees the native engine. Idempotent
     * and safe from any thread. Called from the poller thread itself (a future's dependent
     * stage), it returns at once and the poller frees the engine as it ends.
     */
    @Override
    public void close() {
        if (Thread.currentThread() == poller) {
            closing = true;
            stopNative();
            return;
        }
        synchronized (closeMonitor) {
            closing = true;
            stopNative();
            boolean interrupted = false;
            while (poller.isAlive()) {
                try {
                    poller.join();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            freeNative();
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private void stopNative() {
        lock.readLock().lock();
        try {
            if (handle != 0) {
                try {
                    Native.engineStop(handle);
                } catch (LlmrtException e) {
                    // INTERNAL: the engine failed; the poller has ended or is ending.
                }
            }
        } finally {
            lock.readLock().unlock();
        }
    }

    private void freeNative() {
        lock.writeLock().lock();
        try {
            if (handle != 0) {
                Native.engineFree(handle);
                handle = 0;
            }
        } finally {
            lock.writeLock().unlock();
        }
    }
}
