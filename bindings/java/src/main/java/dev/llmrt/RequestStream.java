package dev.llmrt;

import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CancellationException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * The events of one submitted request, in order, ending with its final event
 * ({@link Engine#submit}). Iterate it ({@link #hasNext()} waits for the next event), turn it
 * into a {@link #stream()}, or {@link #collect()} it into a {@link Result}. Events queue up
 * here as the engine's poller thread receives them, whether or not anyone reads them.
 *
 * <p>Reading is for one thread at a time; {@link #abort()} may come from any thread.
 * {@link #close()} aborts the request if it has not finished, so try-with-resources never
 * leaves a request running.
 *
 * <p>If the engine fails (a bug in the library, {@link Status#INTERNAL}) before the
 * request's final event, {@code hasNext}/{@code next} throw that {@link LlmrtException}.
 * A waiting thread that is interrupted gets a {@link CancellationException} (its interrupt
 * flag stays set; the request goes on).
 */
public final class RequestStream implements Iterator<Event>, AutoCloseable {
    private final Engine engine;
    private final BlockingQueue<Object> queue = new LinkedBlockingQueue<>();
    private volatile long requestId;
    private volatile boolean finished; // the final event (or a failure) has arrived
    // The reading thread's state.
    private Event next;
    private boolean ended;

    final Sink sink = new Sink() {
        @Override
        public void deliver(Event event) {
            if (event.isFinal()) {
                finished = true;
            }
            queue.add(event);
        }

        @Override
        public void fail(RuntimeException cause) {
            finished = true;
            queue.add(new Failure(cause));
        }
    };

    private static final class Failure {
        final RuntimeException cause;

        Failure(RuntimeException cause) {
            this.cause = cause;
        }
    }

    RequestStream(Engine engine) {
        this.engine = engine;
    }

    void setRequestId(long id) {
        this.requestId = id;
    }

    /** The request's id (unique per engine). */
    public long requestId() {
        return requestId;
    }

    /** True once the request's final event has arrived (read or not). */
    public boolean isFinished() {
        return finished;
    }

    /** Waits for the next event; false after the final event was returned. */
    @Override
    public boolean hasNext() {
        if (next != null) {
            return true;
        }
        if (ended) {
            return false;
        }
        Object o;
        try {
            o = queue.take();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CancellationException("interrupted while waiting for an event");
        }
        accept(o);
        return true;
    }

    private void accept(Object o) {
        if (o instanceof Failure) {
            ended = true;
            throw ((Failure) o).cause;
        }
        next = (Event) o;
    }

    /** The next event, waiting for it; the last one is final. */
    @Override
    public Event next() {
        if (!hasNext()) {
            throw new NoSuchElementException("the request has ended");
        }
        Event e = next;
        next = null;
        if (e.isFinal()) {
            ended = true;
        }
        return e;
    }

    /**
     * The next event, waiting at most {@code timeout}; null if none came in time.
     *
     * @throws NoSuchElementException after the final event was returned
     */
    public Event poll(long timeout, TimeUnit unit) {
        if (next == null) {
            if (ended) {
                throw new NoSuchElementException("the request has ended");
            }
            Object o;
            try {
                o = queue.poll(timeout, unit);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new CancellationException("interrupted while waiting for an event");
            }
            if (o == null) {
                return null;
            }
            accept(o);
        }
        return next();
    }

    /** The remaining events as a sequential stream; closing the stream closes this. */
    public Stream<Event> stream() {
        return StreamSupport.stream(Spliterators.spliteratorUnknownSize(this,
                Spliterator.ORDERED | Spliterator.NONNULL), false).onClose(this::close);
    }

    /** Waits for the request to finish and gathers its remaining (unread) events. */
    public Result collect() {
        Result.Builder b = new Result.Builder();
        while (true) {
            Result r = b.add(next());
            if (r != null) {
                return r;
            }
        }
    }

    /**
     * Aborts the request: its final event ({@link FinishReason#ABORT}) follows, unless it had
     * finished already. A no-op once it has finished or the engine is closed.
     */
    public void abort() {
        if (!finished) {
            engine.abortQuietly(requestId);
        }
    }

    /** Aborts the request if it has not finished. Idempotent. */
    @Override
    public void close() {
        abort();
    }
}
