package dev.llmrt;

/**
 * Told how a model load goes ({@link Engine#create(String, ProgressListener)}). It is called
 * on the thread that creates the engine.
 */
@FunctionalInterface
public interface ProgressListener {
    /**
     * @param progress from 0 to 1
     * @param stage a short description of the stage
     * @return true to go on, false to cancel the load (creation then fails with
     *     {@link Status#CANCELLED}); an exception thrown here cancels the load too and is
     *     rethrown by {@code Engine.create}
     */
    boolean onProgress(float progress, String stage);
}
