<?php
// Test harness: writes, reads and invalidates Symfony Cache entries in Redis exactly as a Symfony
// application does, so the Rust integration tests can compare the invalidator with Symfony's own
// invalidateTags(). See README.md in this directory for the contract.
//
//   php tests/frameworks/symfony.php '<CONFIG_JSON>' write|read|invalidate TAG...|race TAG KEYS STOPFILE
//
// CONFIG_JSON:
//   layout          "symfony"          RedisTagAwareAdapter($redis, namespace)
//                   "symfony-versions" TagAwareAdapter(RedisAdapter($redis, namespace),
//                                                      RedisAdapter($redis, tags_namespace))
//                                      (no tags_namespace: TagAwareAdapter(items pool) alone)
//   redis, db       "127.0.0.1:6379", 12 (phpredis \Redis)
//   cluster         ["127.0.0.1:7001", ...] instead of redis/db (phpredis \RedisCluster)
//   namespace       the pool namespace ("" allowed)
//   tags_namespace  symfony-versions only
//   client_prefix   phpredis Redis::OPT_PREFIX (optional)
//
// Every stdout line is one JSON object; errors go to stderr with exit status 1.

declare(strict_types=1);

require_once '/usr/share/php/Symfony/Component/Cache/autoload.php';

use Symfony\Component\Cache\Adapter\RedisAdapter;
use Symfony\Component\Cache\Adapter\RedisTagAwareAdapter;
use Symfony\Component\Cache\Adapter\TagAwareAdapter;

// Warnings are errors here (a silently failing harness would make a test pass for nothing);
// deprecations and @-silenced notices are not.
set_error_handler(static function (int $no, string $msg, string $file, int $line): bool {
    if (!(error_reporting() & $no) || in_array($no, [E_DEPRECATED, E_USER_DEPRECATED], true)) {
        return true;
    }
    throw new \ErrorException($msg, 0, $no, $file, $line);
});

/**
 * Symfony Cache swallows Redis errors: a failed GET is logged and reported as a miss, a failed
 * invalidation is logged and returns false. A harness that reads "miss" because Redis failed would
 * make a test pass for nothing, so any warning the pools log aborts the command instead.
 */
final class FailingLogger extends \Psr\Log\AbstractLogger
{
    public function log($level, $message, array $context = array())
    {
        if (in_array($level, ['debug', 'info', 'notice'], true)) {
            return;
        }
        $replace = [];
        foreach ($context as $k => $v) {
            if (is_scalar($v)) {
                $replace['{' . $k . '}'] = (string) $v;
            }
        }
        $msg = strtr((string) $message, $replace);
        if (($context['exception'] ?? null) instanceof \Throwable) {
            $msg .= ' (' . get_class($context['exception']) . ': ' . $context['exception']->getMessage() . ')';
        }
        throw new \RuntimeException("Symfony Cache $level: $msg");
    }
}

function fail(string $msg): void
{
    fwrite(STDERR, "symfony.php: $msg\n");
    exit(1);
}

function out(array $obj): void
{
    fwrite(STDOUT, json_encode($obj, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR) . "\n");
    fflush(STDOUT);
}

function now_ms(): int
{
    return (int) floor(microtime(true) * 1000);
}

/** @return iterable<array> the JSON objects read from stdin, one per non-empty line */
function stdin_lines(): iterable
{
    while (($line = fgets(STDIN)) !== false) {
        $line = trim($line);
        if ($line === '') {
            continue;
        }
        $obj = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        if (!is_array($obj) || !isset($obj['key']) || !is_string($obj['key'])) {
            throw new \InvalidArgumentException("stdin line without a string \"key\": $line");
        }
        yield $obj;
    }
}

function connect(array $cfg)
{
    if (isset($cfg['cluster'])) {
        if (!is_array($cfg['cluster']) || !$cfg['cluster']) {
            throw new \InvalidArgumentException('"cluster" must be a non-empty list of host:port seeds');
        }
        $redis = new \RedisCluster(null, array_values($cfg['cluster']), 5.0, 5.0);
    } else {
        [$host, $port] = explode(':', $cfg['redis'] ?? '127.0.0.1:6379', 2) + [1 => '6379'];
        $redis = new \Redis();
        $redis->connect($host, (int) $port, 5.0);
        $redis->setOption(\Redis::OPT_READ_TIMEOUT, 5.0);
        $redis->select((int) ($cfg['db'] ?? 0));
    }
    if (($cfg['client_prefix'] ?? '') !== '') {
        $redis->setOption(\Redis::OPT_PREFIX, $cfg['client_prefix']);
    }

    return $redis;
}

/** @return RedisTagAwareAdapter|TagAwareAdapter */
function pool(array $cfg, $redis)
{
    $namespace = (string) ($cfg['namespace'] ?? '');
    $logger = new FailingLogger();
    switch ($cfg['layout'] ?? '') {
        case 'symfony':
            $pool = new RedisTagAwareAdapter($redis, $namespace);
            $pool->setLogger($logger);

            return $pool;
        case 'symfony-versions':
            $items = new RedisAdapter($redis, $namespace);
            $items->setLogger($logger);
            $tags = null;
            if (array_key_exists('tags_namespace', $cfg) && $cfg['tags_namespace'] !== null) {
                $tags = new RedisAdapter($redis, (string) $cfg['tags_namespace']);
                $tags->setLogger($logger);
            }
            $pool = new TagAwareAdapter($items, $tags);
            $pool->setLogger($logger);

            return $pool;
        default:
            throw new \InvalidArgumentException('layout must be "symfony" or "symfony-versions", got ' . json_encode($cfg['layout'] ?? null));
    }
}

function store($pool, string $key, $value, array $tags): void
{
    $item = $pool->getItem($key);
    $item->set($value);
    $item->tag($tags);
    if (!$pool->save($item)) {
        throw new \RuntimeException("save() of \"$key\" returned false");
    }
}

function main(array $argv): void
{
    if (count($argv) < 3) {
        fail("usage: symfony.php '<CONFIG_JSON>' write|read|invalidate TAG...|race TAG KEYS STOPFILE");
    }
    $cfg = json_decode($argv[1], true, 512, JSON_THROW_ON_ERROR);
    if (!is_array($cfg)) {
        fail('CONFIG_JSON must be a JSON object');
    }
    $command = $argv[2];
    $args = array_slice($argv, 3);
    $pool = pool($cfg, connect($cfg));

    switch ($command) {
        case 'write':
            $n = 0;
            foreach (stdin_lines() as $line) {
                store($pool, $line['key'], $line['value'] ?? null, array_values($line['tags'] ?? []));
                ++$n;
            }
            out(['written' => $n]);
            break;

        case 'read':
            foreach (stdin_lines() as $line) {
                $item = $pool->getItem($line['key']);
                out($item->isHit()
                    ? ['key' => $line['key'], 'hit' => true, 'value' => $item->get()]
                    : ['key' => $line['key'], 'hit' => false]);
            }
            break;

        case 'invalidate':
            if (!$args) {
                fail('invalidate needs at least one TAG');
            }
            if (!$pool->invalidateTags($args)) {
                throw new \RuntimeException('invalidateTags() returned false');
            }
            out(['invalidated' => array_values($args)]);
            break;

        case 'race':
            if (count($args) !== 3 || !ctype_digit($args[1]) || (int) $args[1] < 1) {
                fail('usage: race TAG KEYS STOPFILE (KEYS >= 1)');
            }
            [$tag, $keys, $stop] = [$args[0], (int) $args[1], $args[2]];
            for ($seq = 0; ; ++$seq) {
                clearstatcache(true, $stop);
                if (file_exists($stop)) {
                    break;
                }
                // As an application fills its cache: `get()` with a callback, which computes and
                // saves the entry only on a miss (a refill right after each invalidation).
                $key = 'race-' . ($seq % $keys);
                $wrote = false;
                $pool->get($key, static function ($item) use ($tag, $seq, &$wrote): string {
                    $item->tag([$tag]);
                    $wrote = true;
                    return (string) $seq;
                });
                if ($wrote) {
                    out(['key' => $key, 'seq' => $seq, 'done_ms' => now_ms()]);
                }
            }
            break;

        default:
            fail("unknown command \"$command\" (write, read, invalidate, race)");
    }
}

try {
    main($argv);
} catch (\Throwable $e) {
    fail(get_class($e) . ': ' . $e->getMessage());
}
exit(0);
