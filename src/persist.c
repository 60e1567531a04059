/*-------------------------------------------------------------------------
 *
 * persist.c
 *		Keeping the shared counters across restarts.
 *
 * The live part of every entry (burst buckets, the day's count, tokens) and
 * its open reservations are kept in two files under PGDATA/pg_stat:
 *   - ai_ratelimit.dat, the base: every live entry, written whole as a
 *     temporary file, fsynced, then renamed over the old one
 *     (durable_rename), so a crash leaves the previous complete file;
 *   - ai_ratelimit.delta, appended to: blocks of the entries that changed
 *     since the last save (AI_SAVE_DIRTY) and tombstones of saved entries
 *     that were removed, each block fsynced, with its own CRC and the id of
 *     the base it follows.
 * The background worker "ai_ratelimit saver" appends a block every
 * ai_ratelimit.save_interval when something changed, and writes a new base
 * (and drops the deltas) when the deltas have outgrown the base and
 * AI_DELTA_MIN_BYTES; the postmaster writes a base when it shuts down
 * cleanly.  So a save costs what changed, not what is tracked.  Loading
 * reads the base, then every complete block that follows it; a torn last
 * block or deltas of an older base are ignored.  A clean restart keeps
 * every count, and a crash loses at most what changed during the last
 * save_interval.  A user's cached monthly spend is saved too, but restored
 * only from the base written at a clean shutdown whose checkpoint is the
 * last one (nothing can have been recorded since); after a crash it is
 * reloaded from the usage tables.  Reservations come back with their ids,
 * so an application can still settle them.
 *
 * On a primary, the saver logs each periodic save to the WAL first, for
 * standbys and crash recovery (replica.c); with save_interval 0 it still
 * does so every second, to the WAL only, and logs every counter once after
 * each checkpoint (nothing older than a checkpoint is replayed).  A save
 * whose record a checkpoint passed before its files were written is logged
 * once more after it: a standby made from a base backup finds every save
 * either in the files it copied or in the WAL it replays.  A standby's
 * saver writes its own files from what replay applied, so a restarted
 * standby resumes from them.
 *
 * Locking: the writer visits one partition at a time, holding only that
 * partition's lock (exclusively: it empties the partition's dirty list,
 * which entries join when they change, see ai_entry_changed), then writes
 * without locks.  Replay takes the partition lock of each key it applies.
 * Loading runs in the postmaster
 * before any backend exists: it takes no partition lock (nothing else can
 * touch the hash yet), and ai_resv_create takes resv_lock, uncontended.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "catalog/pg_control.h"
#include "common/controldata_utils.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_crc32c.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "calendar.h"
#include "compact.h"
#include "extension.h"
#include "guard.h"
#include "persist.h"
#include "reservations.h"
#include "resvid.h"
#include "saved.h"
#include "shmem.h"
#include "sweep.h"

#define AI_SAVE_FILE		"pg_stat/ai_ratelimit.dat"
#define AI_SAVE_TMP			"pg_stat/ai_ratelimit.dat.tmp"
#define AI_DELTA_FILE		"pg_stat/ai_ratelimit.delta"
#define AI_SAVE_MAGIC		0x4149524C	/* "AIRL": a base */
#define AI_DELTA_MAGIC		0x41495244	/* "AIRD": a delta block */
/* the postmaster starts a saver that ended (or was terminated) this soon */
#define AI_SAVER_RESTART_SECS	5
/* a new base once the deltas outgrow it and this size */
#define AI_DELTA_MIN_BYTES	(8 * 1024 * 1024)

PGDLLEXPORT void ai_saver_main(Datum arg);
static bool ai_shut_down_cleanly(uint64 *checkpoint, bool *replays_none);

/* What a save copies out of shared memory; grown only between partitions. */
typedef struct AiSaveBuf
{
	AiSavedEntry *entries;
	uint32		nentries;
	uint32		maxentries;
	AiSavedResv *resv;
	uint32		nresv;
	uint32		maxresv;
	AiKey	   *tomb;
	uint32		ntomb;
} AiSaveBuf;

/* The saver's own view of the files (the worker process's memory). */
static uint64 base_id = 0;		/* 0: no base written by this process yet */
static uint64 base_bytes = 0;
static uint64 delta_bytes = 0;
static XLogRecPtr whole_wal_redo = InvalidXLogRecPtr;	/* save_interval 0: the
														 * checkpoint after which
														 * every counter was logged */

/* Room for `entries` more entries and all reservations; never under a lock. */
static void
ai_save_buf_grow(AiSaveBuf *b, uint32 entries)
{
	uint32		want_e = b->nentries + entries;
	uint32		want_r = b->nresv + (uint32) ai_max_reservations;

	if (want_e > b->maxentries)
	{
		b->maxentries = Max(want_e, b->maxentries * 2);
		b->entries = repalloc_huge(b->entries, sizeof(AiSavedEntry) * b->maxentries);
	}
	if (want_r > b->maxresv)
	{
		b->maxresv = Max(want_r, b->maxresv * 2);
		b->resv = repalloc_huge(b->resv, sizeof(AiSavedResv) * b->maxresv);
	}
}

/* An empty buffer for `entries` entries and every reservation. */
static void
ai_save_buf_init(AiSaveBuf *b, uint32 entries)
{
	b->nentries = 0;
	b->maxentries = entries;
	b->entries = palloc_extended(sizeof(AiSavedEntry) * entries, MCXT_ALLOC_HUGE);
	b->nresv = 0;
	b->maxresv = Max(ai_max_reservations, 1);
	b->resv = palloc_extended(sizeof(AiSavedResv) * b->maxresv, MCXT_ALLOC_HUGE);
}

/*
 * Copy an entry and its live reservations into the buffer (a restore skips
 * those expired by then).
 */
static void
ai_save_copy_entry(AiSaveBuf *b, AiEntry *e, TimestampTz now)
{
	AiSavedEntry *s = &b->entries[b->nentries++];
	AiResvIter	it;
	AiReservation *r;

	memset(s, 0, sizeof(*s));
	s->key = e->key;
	s->burst_head = e->burst_head;
	s->burst_window_ms = e->burst_window_ms;
	memcpy(s->burst, e->burst, sizeof(s->burst));
	s->day = e->day;
	s->daily_count = e->daily_count;
	s->tokens_head = e->tokens_head;
	memcpy(s->tokens, e->tokens, sizeof(s->tokens));
	s->plan_hash = e->plan_hash;
	s->id_len = e->id_len;
	memcpy(s->id_prefix, e->id_prefix, sizeof(s->id_prefix));
	s->kind = e->kind;
	s->use_tree = e->use_tree;
	s->spend_valid = ai_use_saves_exact(e);	/* restored only after a clean shutdown */
	s->spend_month = e->spend_month;
	s->committed_spend = s->spend_valid ? e->committed_spend : 0;
	/* a reservation being settled is kept: the settling may roll back */
	ai_resv_iter_init(&it, e, AI_RESV_WALK_LIVE, now);
	while (b->nresv < b->maxresv && (r = ai_resv_iter_next(&it, NULL)) != NULL)
	{
		memset(&b->resv[b->nresv], 0, sizeof(AiSavedResv));
		b->resv[b->nresv].id = r->id;
		b->resv[b->nresv].key = r->key;
		b->resv[b->nresv].amount = r->amount;
		b->resv[b->nresv].expires_at = r->expires_at;
		b->resv[b->nresv].tokens = r->tokens;
		b->resv[b->nresv].all_rules = r->all_rules;
		memcpy(b->resv[b->nresv].rules, r->rules, sizeof(r->rules));
		b->nresv++;
	}
}

/*
 * Copy one partition, holding its lock alone: for a base, every live entry
 * (a visit of the whole partition); for a delta, the entries on its dirty
 * list, live or not (a visit of those alone).  With `changed` (a base that
 * also goes to the WAL), the entries on the dirty list are copied there
 * too: the WAL gets what changed, not the whole base.  Each entry copied is
 * marked as saved and clean, and the dirty list is emptied.  Returns false,
 * copying nothing, when a buffer is too small for what it must copy.
 */
static bool
ai_save_copy_partition(AiSaveBuf *b, AiSaveBuf *changed, int partition, bool whole,
					   bool at_shutdown, TimestampTz now, const AiCalendar *cal)
{
	LWLock	   *lock = ai_partition_lock_at(partition);
	int32	   *dirty = &ai_table->dirty_head[partition];
	AiPartIter	it;
	AiEntry    *e;
	uint32		ndirty = 0;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	for (int32 s = *dirty; s >= 0; s = ai_entries[s].dirty_next)
		ndirty++;
	if ((whole ? (uint32) ai_table->part_count[partition] : ndirty) > b->maxentries - b->nentries ||
		(changed != NULL && ndirty > changed->maxentries - changed->nentries))
	{
		LWLockRelease(lock);
		return false;
	}
	if (!whole)
	{
		while (*dirty >= 0)
		{
			e = &ai_entries[*dirty];
			*dirty = e->dirty_next;
			ai_save_copy_entry(b, e, now);
			e->save_flags = AI_SAVE_IN_FILE;
			e->dirty_next = -2;
		}
		LWLockRelease(lock);
		return true;
	}
	ai_part_iter_init(&it, partition);
	while ((e = ai_part_iter_next(&it)) != NULL)
	{
		if (changed != NULL && (e->save_flags & AI_SAVE_DIRTY))
			ai_save_copy_entry(changed, e, now);
		e->dirty_next = -2;
		/*
		 * At a clean shutdown an exact cache is kept too, live or not: the
		 * next start restores it (ai_load), and its first check reads no
		 * usage row.
		 */
		if (!ai_entry_is_live(e, now, cal) && !(at_shutdown && ai_use_saves_exact(e)))
		{
			e->save_flags = 0;	/* not in the new base */
			continue;
		}
		ai_save_copy_entry(b, e, now);
		e->save_flags = AI_SAVE_IN_FILE;
	}
	*dirty = -1;
	LWLockRelease(lock);
	return true;
}

/* Take the tombstones recorded since the last save; true if some were lost. */
static bool
ai_save_take_tombstones(AiSaveBuf *b)
{
	bool		overflow;

	SpinLockAcquire(&ai_table->tomb_mutex);
	overflow = ai_table->tomb_overflow;
	b->ntomb = ai_table->ntomb;
	memcpy(b->tomb, ai_table->tomb, sizeof(AiKey) * b->ntomb);
	ai_table->ntomb = 0;
	ai_table->tomb_overflow = false;
	SpinLockRelease(&ai_table->tomb_mutex);
	return overflow;
}

/* Header, entries, reservations, tombstones and CRC, to an open file. */
static bool
ai_save_write(FILE *f, AiSaveHeader *hdr, AiSaveBuf *b)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, hdr, sizeof(*hdr));
	COMP_CRC32C(crc, b->entries, sizeof(AiSavedEntry) * hdr->nentries);
	COMP_CRC32C(crc, b->resv, sizeof(AiSavedResv) * hdr->nresv);
	COMP_CRC32C(crc, b->tomb, sizeof(AiKey) * hdr->ntomb);
	FIN_CRC32C(crc);
	return fwrite(hdr, sizeof(*hdr), 1, f) == 1 &&
		(hdr->nentries == 0 || fwrite(b->entries, sizeof(AiSavedEntry), hdr->nentries, f) == hdr->nentries) &&
		(hdr->nresv == 0 || fwrite(b->resv, sizeof(AiSavedResv), hdr->nresv, f) == hdr->nresv) &&
		(hdr->ntomb == 0 || fwrite(b->tomb, sizeof(AiKey), hdr->ntomb, f) == hdr->ntomb) &&
		fwrite(&crc, sizeof(crc), 1, f) == 1;
}

/* Write a new base and drop the deltas; on failure the old files stay. */
static bool
ai_save_base(AiSaveHeader *hdr, AiSaveBuf *b)
{
	FILE	   *f = AllocateFile(AI_SAVE_TMP, PG_BINARY_W);
	bool		ok = (f != NULL && ai_save_write(f, hdr, b));

	if (f != NULL && (FreeFile(f) != 0))
		ok = false;
	if (!ok)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("ai_ratelimit could not save its counters: could not write file \"%s\": %m",
						AI_SAVE_TMP),
				 errhint("Free space in the data directory; until a save succeeds, a crash or restart loses the counts since the last good save.")));
		unlink(AI_SAVE_TMP);
		return false;
	}
	/* fsyncs the file and the directory: a crash keeps old or new, whole */
	if (durable_rename(AI_SAVE_TMP, AI_SAVE_FILE, WARNING) != 0)
		return false;
	/* deltas of the old base are ignored from now on; remove them */
	if (unlink(AI_DELTA_FILE) != 0 && errno != ENOENT)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", AI_DELTA_FILE)));
	return true;
}

/* Append a delta block and fsync it. */
static bool
ai_save_delta(AiSaveHeader *hdr, AiSaveBuf *b)
{
	FILE	   *f = AllocateFile(AI_DELTA_FILE, PG_BINARY_A);
	bool		ok = (f != NULL && ai_save_write(f, hdr, b) && fflush(f) == 0 &&
					  pg_fsync(fileno(f)) == 0);

	if (f != NULL && FreeFile(f) != 0)
		ok = false;
	if (!ok)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("ai_ratelimit could not save its counters: could not write file \"%s\": %m",
						AI_DELTA_FILE),
				 errhint("Free space in the data directory; until a save succeeds, a crash or restart loses the counts since the last good save.")));
	return ok;
}

/*
 * Save: a delta of what changed, or a new base when `whole` (or when the
 * deltas have grown, tombstones were lost, or this process has written no
 * base yet).  Visits one partition at a time, so a check waits at most for
 * the visit of its own partition, never for the whole table or the write.
 *
 * to_wal: log the same entries, reservations and tombstones to the WAL
 * first (replica.c), for standbys and crash recovery.  to_file: write the
 * files; without it (save_interval = 0) only the WAL gets the changes.
 * Caller must hold no partition lock.  Returns false (with a WARNING) when
 * the files could not be written; the next save is then whole.
 */
static bool
ai_save(bool whole, uint64 shutdown_lsn, bool to_file, bool to_wal)
{
	AiSaveHeader hdr;
	AiSaveBuf	b;
	AiSaveBuf	changed;
	AiSaveBuf  *wal = NULL;
	TimestampTz now = GetCurrentTimestamp();
	AiCalendar	cal;
	bool		ok = true;
	AiSaveHeader logged_hdr;	/* what went to the WAL */
	AiSaveBuf  *logged = NULL;
	XLogRecPtr	logged_from = InvalidXLogRecPtr;

	if (ai_shared == NULL || ai_table == NULL)
		return false;

	ai_calendar_at(now, &cal);
	memset(&b, 0, sizeof(b));
	b.tomb = palloc_extended(sizeof(AiKey) * AI_TOMB_MAX, MCXT_ALLOC_HUGE);
	/* removals from now on go to the next save */
	if (ai_save_take_tombstones(&b) && to_file)
		whole = true;
	if (to_file && (base_id == 0 || delta_bytes > Max(base_bytes, AI_DELTA_MIN_BYTES)))
		whole = true;
	ai_save_buf_init(&b, whole ? Max(ai_entry_count(), 1024) : 4096);
	/* a base for the files: what changed goes to the WAL on its own */
	if (whole && to_wal && to_file)
	{
		memset(&changed, 0, sizeof(changed));
		ai_save_buf_init(&changed, 4096);
		wal = &changed;
	}

	pg_atomic_write_u32(&ai_shared->dirty, 0);
	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		/* the unlocked count only sizes the buffers; the copy checks again */
		while (!ai_save_copy_partition(&b, wal, p, whole, shutdown_lsn != 0, now, &cal))
		{
			ai_save_buf_grow(&b, (uint32) ai_table->part_count[p] + 64);	/* enough for either */
			if (wal != NULL)
				ai_save_buf_grow(wal, (uint32) ai_table->part_count[p] + 64);
		}
		/* room for every reservation again (grows only when it must) */
		ai_save_buf_grow(&b, 0);
		if (wal != NULL)
			ai_save_buf_grow(wal, 0);
	}

	memset(&hdr, 0, sizeof(hdr));
	hdr.magic = whole ? AI_SAVE_MAGIC : AI_DELTA_MAGIC;
	hdr.version = AI_SAVE_VERSION;
	hdr.ring = AI_BURST_RING;
	hdr.nentries = b.nentries;
	hdr.nresv = b.nresv;
	hdr.ntomb = b.ntomb;
	hdr.base_id = whole ? ((uint64) now << 16) ^ (uint64) MyProcPid : base_id;
	hdr.written_at = now;
	hdr.shutdown_lsn = shutdown_lsn;

	/* WAL first: a crash after it replays what the files may lack */
	if (to_wal)
	{
		pg_atomic_write_u64(&ai_shared->last_wal, (uint64) now);
		logged_hdr = hdr;
		logged = &b;
		if (wal != NULL)
		{
			logged_hdr.nentries = wal->nentries;
			logged_hdr.nresv = wal->nresv;
			logged = wal;
		}
		logged_from = GetXLogInsertRecPtr();
		ai_wal_log_save(&logged_hdr, logged->entries, logged->resv, b.tomb);
	}
	if (to_file)
	{
		if (whole)
			hdr.ntomb = 0;		/* the new base simply leaves them out */
		ok = whole ? ai_save_base(&hdr, &b) : ai_save_delta(&hdr, &b);
	}

	/*
	 * A checkpoint that began after the record was logged may have let a
	 * base backup copy the files before they were written, and the backup's
	 * standby replays the WAL only from that checkpoint on: log the save
	 * again, after it (replaying a save twice applies the same save).
	 */
	if (to_wal && to_file && GetRedoRecPtr() > logged_from)
		ai_wal_log_save(&logged_hdr, logged->entries, logged->resv, b.tomb);
	if (wal != NULL)
	{
		pfree(wal->entries);
		pfree(wal->resv);
	}
	if (to_file && ok)
	{
		uint64		bytes = sizeof(hdr) + ai_saved_bytes(&hdr);

		if (whole)
		{
			base_id = hdr.base_id;
			base_bytes = bytes;
			delta_bytes = 0;
		}
		else
			delta_bytes += bytes;
		pg_atomic_write_u64(&ai_shared->last_save, (uint64) now);
	}
	else if (!ok)
	{
		/* what was taken from shared memory is not on disk: start over */
		base_id = 0;
		ai_mark_dirty();
		pg_atomic_fetch_add_u64(&ai_shared->save_failures, 1);
	}
	pfree(b.entries);
	pfree(b.resv);
	pfree(b.tomb);
	return ok;
}

/* ---- loading ---- */

/*
 * A restored reservation may have been settled by an ai_record_usage that
 * committed after it was saved: mark every user with reservations, so that
 * its first check or record looks in ai_usage first (ai_resv_drop_settled).
 * After a crash, the last periodic save is older than the last commits.
 * After a clean shutdown too: the server that saved may have restored the
 * reservation itself, by replay, and never looked (a crash recovery in
 * single-user mode, as Patroni runs one before it starts a crashed leader
 * again; a standby restarted), and the mark is not saved.  Postmaster (or
 * single-user backend) only, before any session runs.
 */
static void
ai_mark_restored_reservations(void)
{
	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		AiPartIter	it;
		AiEntry    *e;

		ai_part_iter_init(&it, p);
		while ((e = ai_part_iter_next(&it)) != NULL)
			if (e->resv_head >= 0)
				ai_entry_set_restored(e, true);
	}
}

/*
 * The head of a base in layout version 2 (release 1.2): no tombstones, no
 * base id, no shutdown checkpoint; its entries and reservations are laid
 * out as in version 3, and it had no deltas.  Version 3 (releases 1.3 and
 * 1.4) has this build's header, and entries with 16 bytes of the id.
 */
#define AI_SAVE_VERSION_V2		2

typedef struct AiSaveHeaderV2
{
	uint32		magic;
	uint32		version;
	uint32		ring;
	uint32		nentries;
	uint32		nresv;
	TimestampTz written_at;
} AiSaveHeaderV2;

/*
 * Read the header of the next block into *hdr and *raw (its bytes as
 * written, for the CRC); *rawlen is their length.  A version 2 base is
 * read as a version 3 one; ai_apply_saved widens the entries and
 * reservations of versions 3 and 4.  False
 * at the end of the file, on damage, and (with a LOG that says why) on a
 * layout this library cannot read.
 */
static bool
ai_load_header(FILE *f, uint32 magic, AiSaveHeader *hdr, char *raw, size_t *rawlen,
			   bool *foreign)
{
	uint32		head[2];

	if (fread(head, sizeof(head), 1, f) != 1 || head[0] != magic)
		return false;
	memcpy(raw, head, sizeof(head));
	if (head[1] >= AI_SAVE_VERSION_V2 + 1 && head[1] <= AI_SAVE_VERSION)
	{
		/* layouts 3 to 5 share this header */
		*rawlen = sizeof(AiSaveHeader);
		if (fread(raw + sizeof(head), *rawlen - sizeof(head), 1, f) != 1)
			return false;
		memcpy(hdr, raw, sizeof(*hdr));
	}
	else if (head[1] == AI_SAVE_VERSION_V2 && magic == AI_SAVE_MAGIC)
	{
		AiSaveHeaderV2 v2;

		*rawlen = sizeof(AiSaveHeaderV2);
		if (fread(raw + sizeof(head), *rawlen - sizeof(head), 1, f) != 1)
			return false;
		memcpy(&v2, raw, sizeof(v2));
		memset(hdr, 0, sizeof(*hdr));
		hdr->magic = v2.magic;
		hdr->version = v2.version;
		hdr->ring = v2.ring;
		hdr->nentries = v2.nentries;
		hdr->nresv = v2.nresv;
		hdr->written_at = v2.written_at;
	}
	else
	{
		/* not damage: another build wrote it; say so and what it means */
		ereport(LOG,
				(errmsg("ignoring ai_ratelimit counters saved in layout version %u: this library reads versions %d to %d",
						head[1], AI_SAVE_VERSION_V2, AI_SAVE_VERSION),
				 errdetail("Burst places, daily counts and reservations saved before this start are not restored; recorded spend is in the usage tables and counts as before.")));
		*foreign = true;
		return false;
	}
	if (hdr->ring != AI_BURST_RING)
	{
		ereport(LOG,
				(errmsg("ignoring ai_ratelimit counters saved with %u burst buckets: this library keeps %d",
						hdr->ring, AI_BURST_RING)));
		*foreign = true;
		return false;
	}
	return true;
}

/*
 * Read the next base or delta block of a file whole: its header into *hdr
 * and the rest into a palloc'd buffer, checked against its CRC.  NULL at
 * the end of the file, on a damaged or torn block, or on a layout that
 * this library does not read (ai_load_header says so).
 */
static char *
ai_load_block(FILE *f, uint32 magic, AiSaveHeader *hdr, bool *foreign)
{
	size_t		len;
	char	   *data;
	char		raw[Max(sizeof(AiSaveHeader), sizeof(AiSaveHeaderV2))];
	size_t		rawlen;
	pg_crc32c	crc;
	pg_crc32c	file_crc;

	if (!ai_load_header(f, magic, hdr, raw, &rawlen, foreign))
		return NULL;
	len = (size_t) ai_saved_bytes(hdr);
	data = palloc_extended(Max(len, 1), MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	if (data == NULL)
		return NULL;
	if ((len > 0 && fread(data, 1, len, f) != len) ||
		fread(&file_crc, sizeof(file_crc), 1, f) != 1)
	{
		pfree(data);
		return NULL;
	}
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, raw, rawlen);
	COMP_CRC32C(crc, data, len);
	FIN_CRC32C(crc);
	if (!EQ_CRC32C(crc, file_crc))
	{
		pfree(data);
		return NULL;
	}
	return data;
}

/*
 * Read the files into freshly created shared memory: the base, then every
 * complete delta block of that base.  Called from the shmem startup hook
 * in the postmaster, before any backend runs.  Missing files are normal; a
 * damaged base is reported and ignored, and so is a damaged delta block
 * and everything after it.
 */
void
ai_load(void)
{
	FILE	   *f;
	AiSaveHeader hdr;
	char	   *data;
	TimestampTz now = GetCurrentTimestamp();
	uint64		id;
	uint32		blocks = 0;
	uint32		restored;
	TimestampTz saved_at;
	uint64		checkpoint;
	bool		replays_none;
	bool		clean = ai_shut_down_cleanly(&checkpoint, &replays_none);
	uint64		base_checkpoint;
	bool		older_layout;
	bool		with_spend;
	bool		foreign = false;

	f = AllocateFile(AI_SAVE_FILE, PG_BINARY_R);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", AI_SAVE_FILE)));
		return;
	}
	data = ai_load_block(f, AI_SAVE_MAGIC, &hdr, &foreign);
	FreeFile(f);
	if (data == NULL && foreign)
		return;
	if (data == NULL)
	{
		ereport(LOG,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("ignoring damaged ai_ratelimit file \"%s\"", AI_SAVE_FILE)));
		return;
	}
	older_layout = (hdr.version != AI_SAVE_VERSION);
	if (older_layout)
		ereport(LOG,
				(errmsg("ai_ratelimit is reading counters saved in layout version %u", hdr.version),
				 errdetail("The next save writes version %d.", AI_SAVE_VERSION)));
	id = hdr.base_id;
	base_checkpoint = hdr.shutdown_lsn;
	saved_at = hdr.written_at;

	/*
	 * A base written at the shutdown whose checkpoint is the last one holds
	 * every user's spend as the tables hold it, as long as this start
	 * replays no WAL after that checkpoint: nothing can have committed
	 * since.  Only then is the cached spend restored.
	 */
	with_spend = clean && !older_layout && base_checkpoint == checkpoint && replays_none;
	restored = ai_apply_saved(&hdr, data, now, with_spend ? AI_APPLY_WITH_SPEND : AI_APPLY_LOAD);
	pfree(data);

	/*
	 * Nor has replay left a cache stale then: the generations stay as the
	 * restored uses were stamped with (replica.c's ai_after_recovery).
	 */
	if (with_spend)
		pg_atomic_write_u32(&ai_shared->caches_fresh, 1);

	f = AllocateFile(AI_DELTA_FILE, PG_BINARY_R);
	if (f != NULL)
	{
		while ((data = ai_load_block(f, AI_DELTA_MAGIC, &hdr, &foreign)) != NULL)
		{
			if (hdr.base_id == id)
			{
				restored += ai_apply_saved(&hdr, data, now, AI_APPLY_LOAD);
				saved_at = hdr.written_at;
				blocks++;
			}
			pfree(data);
		}
		FreeFile(f);
	}
	pg_atomic_write_u64(&ai_shared->last_save, (uint64) saved_at);
	ereport(LOG,
			(errmsg("ai_ratelimit restored the counters of %u users and %u reservations",
					ai_entry_count(), restored),
			 errdetail("From the saved counters and %u later changes.", blocks)));
	/*
	 * After a clean shutdown the base must be the one written then, which
	 * names that shutdown's checkpoint; any other means that save failed.
	 */
	if (clean && !older_layout && base_checkpoint != checkpoint)
	{
		pg_atomic_write_u64(&ai_shared->save_failures, 1);
		ereport(WARNING,
				(errmsg("ai_ratelimit restored counters saved at %s, not at the last shutdown",
						timestamptz_to_str(saved_at)),
				 errdetail("The save at shutdown failed: burst places and daily counts taken after that time are not counted.")));
	}
	ai_mark_restored_reservations();
}

/*
 * Did the server shut down cleanly (smart or fast: a shutdown checkpoint
 * was written)?  An immediate stop also ends the postmaster with status 0,
 * but leaves the control file "in production", like a crash.  *replays_none
 * (when not NULL): does this start apply no WAL after that checkpoint?
 * True after a primary's clean shutdown, unless the data directory asks for
 * recovery: a standby (standby.signal), a point-in-time restore
 * (recovery.signal) or a base backup (backup_label), each of which may be a
 * copy of a cleanly stopped server and replays what was committed after the
 * copy.  A standby's own clean shutdown (DB_SHUTDOWNED_IN_RECOVERY) may
 * replay more at its next start, with or without a signal file.
 */
static bool
ai_shut_down_cleanly(uint64 *checkpoint, bool *replays_none)
{
	bool		crc_ok;
	ControlFileData *cf = get_controlfile(DataDir, &crc_ok);
	bool		clean = crc_ok && (cf->state == DB_SHUTDOWNED ||
								   cf->state == DB_SHUTDOWNED_IN_RECOVERY);
	struct stat st;

	*checkpoint = (uint64) cf->checkPoint;
	if (replays_none != NULL)
		*replays_none = crc_ok && cf->state == DB_SHUTDOWNED &&
			stat(STANDBY_SIGNAL_FILE, &st) != 0 &&
			stat(RECOVERY_SIGNAL_FILE, &st) != 0 &&
			stat(BACKUP_LABEL_FILE, &st) != 0;
	pfree(cf);
	return clean;
}

/*
 * Postmaster exit: after a clean shutdown, save everything, as a base that
 * says so.  After an immediate stop or a crash, save nothing: the counters
 * may hold what transactions that never committed took, so the next start
 * reads the last periodic save, as after a crash.
 */
void
ai_save_at_exit(int code, Datum arg)
{
	uint64		checkpoint;

	if (code != 0 || !ai_shut_down_cleanly(&checkpoint, NULL))
		return;
	if (!ai_save(true, checkpoint, true, false))
		ereport(WARNING,
				(errmsg("ai_ratelimit could not save its counters at shutdown"),
				 errdetail("The next start will restore the counters of the last good save and say so.")));
}

void
ai_register_saver(void)
{
	BackgroundWorker worker;

	ai_worker_describe(&worker, BGWORKER_SHMEM_ACCESS, BgWorkerStart_PostmasterStart,
					   AI_SAVER_RESTART_SECS, "ai_saver_main", "ai_ratelimit saver");
	RegisterBackgroundWorker(&worker);
}

/*
 * One periodic save, when something changed (else a heartbeat): to the
 * files (unless save_interval is 0) and, on a primary whose wal_level
 * allows standbys, to the WAL.  For the checkpoint guard (guard.c), a
 * save always runs, visiting every partition under its lock, so that it
 * takes every change made before it began.  Returns whether everything
 * taken before it began is now saved.
 */
static bool
ai_save_changes(bool for_guard)
{
	bool		to_file = ai_save_interval > 0;
	bool		to_wal = !RecoveryInProgress() && XLogStandbyInfoActive();
	XLogRecPtr	redo = to_wal ? GetRedoRecPtr() : InvalidXLogRecPtr;

	/*
	 * Without files, the WAL after a checkpoint must hold every counter: a
	 * crash replays only from there, and a standby made from a base backup
	 * has nothing older.  Once after each checkpoint, the save is whole.
	 */
	if (!to_file && to_wal && redo != whole_wal_redo)
	{
		if (!ai_save(true, 0, false, true))
			return false;
		whole_wal_redo = redo;
		return true;
	}
	if ((to_file || to_wal) && (for_guard || pg_atomic_read_u32(&ai_shared->dirty) != 0))
		return ai_save(false, 0, to_file, to_wal);
	if (to_file)
	{
		/*
		 * Nothing changed since the last good save: what is on disk is
		 * current now, so last_save moves on an idle server too (a
		 * heartbeat), and falls behind only when saving fails or stops.
		 */
		pg_atomic_write_u64(&ai_shared->last_save, (uint64) GetCurrentTimestamp());
	}
	return true;
}

/* The saver's exit: it is no longer running (ai_ratelimit_saves shows it). */
static void
ai_saver_exit(int code, Datum arg)
{
	ai_guard_saver_is(NULL);
	pg_atomic_write_u32(&ai_shared->saver_pid, 0);
}

/*
 * The background worker: every second, sweep (expired reservations, dead
 * entries when the table is nearly full) and keep the reservation id
 * ceiling ahead (resvid.c) and start the workers that total usage
 * (compact.c); every save_interval (every second when it is
 * 0), save what changed.  Asked to stop (a shutdown, or a SIGTERM of its
 * own), it saves once more, so that a clean shutdown sends
 * the standbys everything (the postmaster writes the files again after the
 * shutdown checkpoint), and exits with status 1: the postmaster starts it
 * again after AI_SAVER_RESTART_SECS unless the server is stopping.
 */
void
ai_saver_main(Datum arg)
{
	TimestampTz last_save = GetCurrentTimestamp();

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	before_shmem_exit(ai_saver_exit, (Datum) 0);
	pg_atomic_write_u64(&ai_shared->saver_started, (uint64) last_save);
	pg_atomic_fetch_add_u32(&ai_shared->saver_starts, 1);
	pg_atomic_write_u32(&ai_shared->saver_pid, (uint32) MyProcPid);
	ai_guard_saver_is(MyLatch);

	for (;;)
	{
		TimestampTz now;
		uint64		wanted;
		int			interval = ai_save_interval > 0 ? ai_save_interval : 1000;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(interval, 1000), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
		{
			(void) ai_save_changes(false);
			break;
		}
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		now = GetCurrentTimestamp();
		ai_sweep_background(now);
		if (!RecoveryInProgress())
		{
			ai_ids_ensure(now, AI_IDS_SAVER);
			ai_compact_tick(now);
		}
		if ((wanted = ai_guard_wanted()) != 0)
		{
			/* a checkpoint waits for a save that begins from now on */
			if (ai_save_changes(true))
				ai_guard_saved(wanted);
			last_save = now;
		}
		else if (now - last_save >= (int64) interval * 1000)
		{
			(void) ai_save_changes(false);
			last_save = now;
		}
	}
	proc_exit(1);
}
