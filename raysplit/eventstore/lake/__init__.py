"""The Parquet lake beside the database: its files (:mod:`.files`), its readers
(:mod:`.reader`) and the jobs that move raw rows into it (:mod:`.archive`)."""
