package dev.llmrt;

/** Where the poller thread delivers one request's events. */
interface Sink {
    /** An event of the request (called on the poller thread, in order). */
    void deliver(Event event);

    /** The request will get no more events: the engine failed or stopped first. */
    void fail(RuntimeException cause);
}
