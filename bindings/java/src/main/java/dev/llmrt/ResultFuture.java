package dev.llmrt;

import java.util.concurrent.CompletableFuture;

/** The future of {@link Engine#submitAsync}: cancelling it aborts the request. */
final class ResultFuture extends CompletableFuture<Result> {
    private final Engine engine;
    private final Result.Builder builder = new Result.Builder();
    private volatile long requestId;

    final Sink sink = new Sink() {
        @Override
        public void deliver(Event event) {
            Result r = builder.add(event);
            if (r != null) {
                complete(r);
            }
        }

        @Override
        public void fail(RuntimeException cause) {
            completeExceptionally(cause);
        }
    };

    ResultFuture(Engine engine) {
        this.engine = engine;
    }

    void setRequestId(long id) {
        this.requestId = id;
    }

    @Override
    public boolean cancel(boolean mayInterruptIfRunning) {
        boolean cancelled = super.cancel(mayInterruptIfRunning);
        if (cancelled) {
            engine.abortQuietly(requestId);
        }
        return cancelled;
    }
}
