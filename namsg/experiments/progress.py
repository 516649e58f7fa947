"""What a run reports as it trains: the running loss and accuracy of an epoch, a progress bar
or periodic lines within it, and one line per epoch."""

import sys
import time

import mxnet as mx


class Tally:
    """Summed loss and correct predictions, kept as NDArrays; each batch waits only for the
    sums of the batch before it."""

    def __init__(self):
        self.loss, self.correct, self.count = mx.nd.zeros(1), mx.nd.zeros(1), 0

    def add(self, outs, ys, losses):
        # MXNet's engine is asynchronous and MXNet's own optimizers never wait: without this,
        # the loop queued a whole epoch in seconds (all its inputs in memory at once) and the
        # progress bar and lines counted batches queued, not trained. One batch stays in flight.
        self.loss.wait_to_read()
        self.correct.wait_to_read()
        for out, y, loss in zip(outs, ys, losses):
            self.loss += loss.sum().as_in_context(mx.cpu())
            self.correct += (out.argmax(axis=1) == y.astype('float32')).sum().as_in_context(
                mx.cpu())
            self.count += y.shape[0]

    def means(self):
        """(mean loss, accuracy) over the examples added so far; waits for the engine."""
        return self.loss.asscalar() / self.count, self.correct.asscalar() / self.count


class Progress:
    """Progress within an epoch: a tqdm bar (``bar``, for a terminal), or else, every
    ``every`` seconds, one line through ``echo`` with the batch, the running loss and the
    images per second (for output going to a file), or nothing."""

    def __init__(self, batches, total, desc, tally, bar=False, every=None, echo=None):
        self.total, self.desc, self.tally = total, desc, tally
        self.every = every if echo is not None and not bar else None
        self.echo = echo
        if bar:
            from tqdm import tqdm
            batches = tqdm(batches, total=total, leave=False, file=sys.stderr, desc=desc)
        self.batches = batches

    def __iter__(self):
        start = last = time.monotonic()
        for done, batch in enumerate(self.batches, start=1):
            yield batch
            if self.every is None or done >= self.total:
                continue
            now = time.monotonic()
            if now - last >= self.every:
                last = now
                loss, _ = self.tally.means()          # waits for the engine: only this often
                self.echo('%s: batch %d/%d, running loss %.5f, %.0f images/s'
                          % (self.desc, done, self.total, loss,
                             self.tally.count / max(now - start, 1e-9)))


def format_record(run, r):
    """One line for an epoch record."""
    mu = '' if r['mu'] is None else ' mu %.3g' % r['mu']
    boost = '' if not r['boost'] else ' (boost: lr x%.3f, mu %.3g -> %.3g)' % (
        r['boost']['factor'], r['boost']['old_mu'], r['boost']['new_mu'])
    return ('%s epoch %d: train loss %.5f acc %.4f | val loss %.4f acc %.4f | lr %.3g%s | '
            '%.1f s%s' % (run, r['epoch'], r['train_loss'], r['train_acc'], r['val_loss'],
                          r['val_acc'], r['lr'], mu, r['seconds'], boost))
