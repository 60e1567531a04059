/*-------------------------------------------------------------------------
 *
 * resvid.c
 *		Reservation ids that no server of a cluster ever issues twice.
 *
 * An application holds a reservation id from its check until it records
 * or releases the call, maybe across a restart, a crash or a failover of
 * the server.  If the id could be issued again, a late record would settle
 * someone else's reservation, or a crash would take a new reservation for
 * an old, settled one, and a budget would be passed.  So an id is
 *
 *     (ms << 22) | ((timeline & 63) << 16) | seq
 *
 * ms: milliseconds since 2026-01-01 UTC (until 2095); timeline: the WAL
 * timeline the primary writes on; seq: 0..65535 within one ms.  Ids grow
 * on a server: each is above the last one issued, whatever the clock does.
 * Across server lives:
 *   - a restart or a crash: the server never issues an id whose ms has not
 *     first been promised in a small file (pg_stat/ai_ratelimit.ids, written
 *     and fsynced ahead, a minute at a time), so after any stop it starts
 *     above every id it issued;
 *   - a promotion or a point-in-time restore: PostgreSQL starts a new
 *     timeline, so the new primary's ids differ from every id the old one
 *     issued, even ids it issued after the last WAL the standby received;
 *   - restored and replayed reservations, and the WAL record that the
 *     ceiling logs, raise the floor too, so a standby or a restored server
 *     continues above what it knows of.
 * What is assumed: a server started from a copy of another's data directory
 * on the same timeline (a base backup started without recovery, not as a
 * standby) continues only above what it copied and replayed, plus the clock:
 * its ids can meet the original's only if its clock is behind the time the
 * original issued them.  Two primaries on one timeline at once (split
 * brain) are outside every guarantee.
 *
 * Locking: the last id (ids_last_*) is guarded by resv_lock, taken by
 * ai_id_next's caller; the ceiling is raised under ids_lock, which is never
 * taken while a partition lock or resv_lock is held, since it writes a file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xlog.h"
#include "access/xloginsert.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/timestamp.h"

#include "replica.h"
#include "resvid.h"
#include "shmem.h"

/*
 * Log a reservation id ceiling: a standby, or this server after a crash,
 * then issues ids only above it.  Not flushed: nothing is lost if it is not
 * (see above).
 */
static void
ai_ids_wal_log(int64 ceiling_ms)
{
	XLogBeginInsert();
	XLogRegisterData((char *) &ceiling_ms, sizeof(ceiling_ms));
	(void) XLogInsert(AI_RMGR_ID, XLOG_AI_IDS);
}

#define AI_IDS_FILE				"pg_stat/ai_ratelimit.ids"
#define AI_IDS_TMP				"pg_stat/ai_ratelimit.ids.tmp"
#define AI_IDS_MAGIC			0x41495249	/* "AIRI" */
#define AI_IDS_VERSION			1

#define AI_ID_SEQ_BITS			16
#define AI_ID_TLI_BITS			6
#define AI_ID_MS_SHIFT			(AI_ID_SEQ_BITS + AI_ID_TLI_BITS)
#define AI_ID_SEQ_MAX			((1 << AI_ID_SEQ_BITS) - 1)
#define AI_ID_MS_MAX			((INT64CONST(1) << (63 - AI_ID_MS_SHIFT)) - 1)

/* 2026-01-01 00:00:00 UTC as a TimestampTz (9497 days after 2000-01-01) */
#define AI_ID_EPOCH				(INT64CONST(9497) * USECS_PER_DAY)

/* The ceiling is promised this far ahead of the clock ... */
#define AI_IDS_AHEAD_MS			60000
/* ... raised by the saver when less than this is left ... */
#define AI_IDS_SAVER_MARGIN_MS	30000
/* ... and by a check itself when less than this is left. */
#define AI_IDS_CHECK_MARGIN_MS	5000

typedef struct AiIdsFile
{
	uint32		magic;
	uint32		version;
	int64		ceiling_ms;
	pg_crc32c	crc;			/* of the fields above */
} AiIdsFile;

static int64
ai_id_ms(TimestampTz now)
{
	return now > AI_ID_EPOCH ? (now - AI_ID_EPOCH) / 1000 : 0;
}

/*
 * The time an id's ms part names: when it was issued, or later if the
 * clock had gone back (ids stay above the last one issued).
 */
TimestampTz
ai_id_time(int64 id)
{
	return AI_ID_EPOCH + (id >> AI_ID_MS_SHIFT) * 1000;
}

static pg_crc32c
ai_ids_crc(const AiIdsFile *f)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, f, offsetof(AiIdsFile, crc));
	FIN_CRC32C(crc);
	return crc;
}

/* Raise the floor: the next id's ms is at least ms.  Caller holds resv_lock. */
static void
ai_ids_floor_ms(int64 ms)
{
	if (ms > ai_shared->ids_last_ms)
	{
		ai_shared->ids_last_ms = ms;
		ai_shared->ids_last_seq = 0;
		ai_shared->ids_last_tli = 0;
	}
}

/*
 * An id that exists (restored or replayed): every later id is above it.
 * Caller holds resv_lock exclusively.
 */
void
ai_ids_floor_id(int64 id)
{
	if (id > 0)
		ai_ids_floor_ms((id >> AI_ID_MS_SHIFT) + 1);
}

/*
 * At start, in the postmaster (before any backend): read the ceiling of the
 * last life.  Every id issued before is below it.  A missing file is a new
 * cluster (or one from before ids had a ceiling: their ids are far below
 * any made now); a damaged one is reported, and the clock is the floor.
 */
void
ai_ids_load(void)
{
	FILE	   *f = AllocateFile(AI_IDS_FILE, PG_BINARY_R);
	AiIdsFile	data;
	int64		ceiling = 0;

	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", AI_IDS_FILE)));
	}
	else
	{
		if (fread(&data, sizeof(data), 1, f) == 1 && data.magic == AI_IDS_MAGIC &&
			data.version == AI_IDS_VERSION && EQ_CRC32C(data.crc, ai_ids_crc(&data)))
			ceiling = data.ceiling_ms;
		else
			ereport(LOG,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("ignoring damaged ai_ratelimit file \"%s\"", AI_IDS_FILE),
					 errdetail("New reservation ids start from the clock.")));
		FreeFile(f);
	}
	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	ai_ids_floor_ms(ceiling);
	LWLockRelease(ai_shared->resv_lock);
	pg_atomic_write_u64(&ai_shared->ids_ceiling, (uint64) ceiling);
}

/* Write the ceiling durably; false (with a LOG) when it could not be. */
static bool
ai_ids_write(int64 ceiling)
{
	AiIdsFile	data;
	FILE	   *f;
	bool		ok;

	memset(&data, 0, sizeof(data));
	data.magic = AI_IDS_MAGIC;
	data.version = AI_IDS_VERSION;
	data.ceiling_ms = ceiling;
	data.crc = ai_ids_crc(&data);
	f = AllocateFile(AI_IDS_TMP, PG_BINARY_W);
	ok = (f != NULL && fwrite(&data, sizeof(data), 1, f) == 1);
	if (f != NULL && FreeFile(f) != 0)
		ok = false;
	if (!ok)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", AI_IDS_TMP)));
		unlink(AI_IDS_TMP);
		return false;
	}
	/* fsyncs the file and pg_stat: after a crash the file is old or new */
	return durable_rename(AI_IDS_TMP, AI_IDS_FILE, LOG) == 0;
}

/*
 * Make sure ids can be issued for a while: when the durable ceiling is
 * near the clock (or the last id), promise a minute more in the file, then
 * in shared memory, and log it to the WAL for standbys.  A check calls this
 * (AI_IDS_CHECK) before taking its partition lock when it may issue an id,
 * and again (AI_IDS_FORCE) when ai_id_next met the ceiling; the saver calls
 * it every second (AI_IDS_SAVER), raising the ceiling early while ids are
 * being issued.  Caller holds no partition lock nor resv_lock.
 *
 * When the file cannot be written, a check fails (no id can be issued that
 * a crash could not repeat); the saver only warns.
 */
void
ai_ids_ensure(TimestampTz now, AiIdsMode mode)
{
	int64		ms = ai_id_ms(now);
	int64		margin = mode == AI_IDS_SAVER ? AI_IDS_SAVER_MARGIN_MS : AI_IDS_CHECK_MARGIN_MS;
	int64		ceiling = (int64) pg_atomic_read_u64(&ai_shared->ids_ceiling);
	int64		last;
	int64		wanted;

	if (mode != AI_IDS_FORCE && ms + margin < ceiling)
		return;
	if (ms + AI_IDS_AHEAD_MS > AI_ID_MS_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("ai_ratelimit reservation ids are exhausted"),
				 errdetail("Ids are made from the time since 2026, and run out in 2095.")));

	LWLockAcquire(ai_shared->resv_lock, LW_SHARED);
	last = ai_shared->ids_last_ms;
	LWLockRelease(ai_shared->resv_lock);
	/* the saver keeps an idle server's file still */
	if (mode == AI_IDS_SAVER && last + 2 * AI_IDS_AHEAD_MS < ms)
		return;

	LWLockAcquire(ai_shared->ids_lock, LW_EXCLUSIVE);
	ceiling = (int64) pg_atomic_read_u64(&ai_shared->ids_ceiling);
	if (Max(ms, last) + margin < ceiling)
	{
		LWLockRelease(ai_shared->ids_lock);
		return;
	}
	wanted = Max(Max(ms, last), ceiling) + AI_IDS_AHEAD_MS;
	if (!ai_ids_write(wanted))
	{
		LWLockRelease(ai_shared->ids_lock);
		ereport(mode == AI_IDS_SAVER ? WARNING : ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("ai_ratelimit cannot issue reservation ids: could not save their ceiling in \"%s\"",
						AI_IDS_FILE),
				 errdetail("A reservation id is issued only after a file promises that no restart can issue it again."),
				 errhint("Free space in the data directory; checks without an estimate still work.")));
		return;
	}
	if (!RecoveryInProgress())
		ai_ids_wal_log(wanted);
	pg_atomic_write_u64(&ai_shared->ids_ceiling, (uint64) wanted);
	pg_atomic_write_u64(&ai_shared->ids_saved_at, (uint64) GetCurrentTimestamp());
	LWLockRelease(ai_shared->ids_lock);
}

/*
 * The next id, above every id issued or known here, on this primary's
 * timeline; AI_ID_NEED_CEILING when it would reach the durable ceiling
 * (the caller releases its locks, calls ai_ids_ensure and tries again).
 * Caller holds resv_lock exclusively; the server is out of recovery.
 */
int64
ai_id_next(TimestampTz now)
{
	uint32		tli = (uint32) (GetWALInsertionTimeLine() & ((1 << AI_ID_TLI_BITS) - 1));
	int64		ms = Max(ai_id_ms(now), ai_shared->ids_last_ms);
	uint32		seq = 0;

	if (ms == ai_shared->ids_last_ms && tli == ai_shared->ids_last_tli)
	{
		seq = ai_shared->ids_last_seq + 1;
		if (seq > AI_ID_SEQ_MAX)
		{
			ms++;
			seq = 0;
		}
	}
	/* also keeps ms within its bits: the ceiling never passes AI_ID_MS_MAX */
	if (ms >= (int64) pg_atomic_read_u64(&ai_shared->ids_ceiling))
		return AI_ID_NEED_CEILING;
	ai_shared->ids_last_ms = ms;
	ai_shared->ids_last_seq = seq;
	ai_shared->ids_last_tli = tli;
	return (ms << AI_ID_MS_SHIFT) | ((int64) tli << AI_ID_SEQ_BITS) | seq;
}

/*
 * Redo of a ceiling logged by the primary: ids up to it may exist, so this
 * server's next ids (after a promotion, or a crash recovery) start above
 * it.  The durable ceiling of this server is not raised: only its own file
 * can promise that.
 */
void
ai_ids_redo(const char *data, uint32 len)
{
	int64		ceiling;

	if (len != sizeof(int64))
	{
		ereport(WARNING,
				(errmsg("ai_ratelimit skipped a reservation id ceiling of another layout (%u bytes)", len),
				 errhint("Run the same ai_ratelimit version on the primary and its standbys.")));
		return;
	}
	memcpy(&ceiling, data, sizeof(ceiling));
	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	ai_ids_floor_ms(ceiling);
	LWLockRelease(ai_shared->resv_lock);
}
