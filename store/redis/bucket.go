package redis

import (
	"fmt"
	"hash/fnv"
)

// Buckets is how many hash-tagged buckets the devices are spread over. A
// device's keys (document, history, attestations) and its entries in the
// indexes, counters and holder map live in its bucket, so one script writes
// all of them atomically, and a Redis Cluster spreads the buckets over its
// masters. The tags "{b000}" … "{b255}" fall evenly on a cluster's slots: on
// a three-master cluster with the default slot ranges, 81, 86 and 89.
const Buckets = 256

// bucketOf returns the bucket of a device id (FNV-1a, so that every ferryd
// version agrees on it).
func bucketOf(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % Buckets)
}

// bucketPrefix returns the key prefix of bucket b: "<prefix>{b042}:".
func (s *Store) bucketPrefix(b int) string { return fmt.Sprintf("%s{b%03d}:", s.prefix, b) }

// deviceBucket returns the key prefix of the bucket that holds device id.
func (s *Store) deviceBucket(id string) string { return s.bucketPrefix(bucketOf(id)) }

// holdersKey is the hash, in device id's bucket, that maps the ids of the
// bucket's connected devices to the ferryd instance holding their streams.
func (s *Store) holdersKey(id string) string { return s.deviceBucket(id) + "holders" }

// BucketTag returns the hash tag of the bucket that holds device id,
// "{b042}": for tests and operators looking at the keys of one device.
func BucketTag(id string) string { return fmt.Sprintf("{b%03d}", bucketOf(id)) }
